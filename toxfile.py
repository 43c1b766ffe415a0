"""tox's inline plugin: the containers environment is reported as SKIP, in the summary at the
end of a `tox` run, when no container engine is reachable (off CI), rather than as OK.

scripts/test-containers --engine-check decides, so the rule lives in one place.
"""

from __future__ import annotations

import subprocess
from typing import Any

from tox.plugin import impl
from tox.tox_env.errors import Skip

ENGINE_CHECK = ["bash", "scripts/test-containers", "--engine-check"]
ENGINE_MISSING = 3


@impl
def tox_before_run_commands(tox_env: Any) -> None:
    """Skip `containers` when the engine check says there is nothing to run it on."""
    if tox_env.name != "containers":
        return
    check = subprocess.run(
        ENGINE_CHECK, cwd=tox_env.core["tox_root"], capture_output=True, text=True, check=False
    )
    if check.returncode == ENGINE_MISSING:
        raise Skip(f"{check.stdout.strip()}: the images and the compose stack were not tested")
