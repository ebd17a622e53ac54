"""HTTPS interception: the local certificate authority (`ca.py`) and the host policy
for `CONNECT` (`policy.py`). Only `web/`, `wrap` and the CLI use this package."""
