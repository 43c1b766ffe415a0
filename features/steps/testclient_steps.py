"""Steps that talk to the test client service."""

from __future__ import annotations

from behave import given, then, when
from behave.runner import Context
from prometheus_client.parser import text_string_to_metric_families

from features.steps.support import expect, send

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@when("I open the test client's index")
def step_when_open_index(context: Context) -> None:
    send(context, context.testclient_url, "GET", "/")


@when("I open the test client's index in a browser")
def step_when_open_index_in_browser(context: Context) -> None:
    send(context, context.testclient_url, "GET", "/", headers={"Accept": BROWSER_ACCEPT})


@when("I read the test client's metrics")
def step_when_read_metrics(context: Context) -> None:
    send(context, context.testclient_url, "GET", "/_metrics")


@given("I noted how many runs of {name:S} the test client's metrics count")
def step_given_noted_runs(context: Context, name: str) -> None:
    send(context, context.testclient_url, "GET", "/_metrics")
    [context.runs_before] = _samples(context, "testclient_check_runs_total", check=name)


@then("the metrics count at least one more run of {name:S}")
def step_then_metrics_count_a_run(context: Context, name: str) -> None:
    # At least: in target mode a prober may run the check too.
    [runs] = _samples(context, "testclient_check_runs_total", check=name)
    expect(context, True, runs >= context.runs_before + 1, f"runs of {name}: {runs}")


@then("the metrics say {name:S} last {verdict}")
def step_then_metrics_say_verdict(context: Context, name: str, verdict: str) -> None:
    shown = _samples(context, "testclient_check_verdict", check=name, verdict=verdict)
    expect(context, [1.0], shown, f"testclient_check_verdict of {name}, {verdict}")


def _samples(context: Context, sample_name: str, **labels: str) -> list[float]:
    families = text_string_to_metric_families(context.response.text)
    return [
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    ]


@when("I run the test client's {path:S}")
def step_when_run_check(context: Context, path: str) -> None:
    send(context, context.testclient_url, "POST", path)


@then("the index lists {names}")
def step_then_index_lists(context: Context, names: str) -> None:
    listed = [check["name"] for check in context.response.json()["checks"]]
    expect(context, names.split(", "), listed, "checks listed")


@then("the index names the kvservice under test")
def step_then_index_names_kv(context: Context) -> None:
    kv_url = context.response.json()["kv_url"]
    expect(context, True, kv_url.startswith("http"), f"kv_url {kv_url!r} is a URL")


@then("the check {name:S} passed with every step")
def step_then_check_passed(context: Context, name: str) -> None:
    result = context.response.json()
    expect(context, (name, True), (result["test"], result["passed"]), "check and verdict")
    failed = [step for step in result["steps"] if not step["passed"]]
    expect(context, [], failed, "failed steps")


@then("every check in the results passed")
def step_then_all_passed(context: Context) -> None:
    results = context.response.json()["results"]
    verdicts = {result["test"]: result["passed"] for result in results}
    expect(context, {name: True for name in verdicts}, verdicts, "verdicts")
    expect(context, True, len(verdicts) >= 9, "at least nine checks ran")
