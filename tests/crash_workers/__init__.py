"""Child processes that tests/test_crash.py starts and kills with SIGKILL."""
