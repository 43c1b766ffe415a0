"""The test client: checks that prove a running kvservice behaves as its contract says."""
