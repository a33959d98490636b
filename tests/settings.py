"""The test suite's settings: the project's, in development mode (DEBUG=1 unless the environment says otherwise).

Set before mmsearch.settings is read, so worker and web-server subprocesses the tests start inherit it too.
"""

import os

os.environ.setdefault("DEBUG", "1")

from mmsearch.settings import *  # noqa: E402,F401,F403

# The suite makes many requests a minute from one client: throttling stays on, at rates no test reaches
# (tests/search/test_hardening.py lowers them to check the throttle itself).
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {k: "100000/min" for k in REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]}}  # noqa: F405
