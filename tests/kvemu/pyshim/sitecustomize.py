"""Installs the *.localhost resolver shim when this directory is on PYTHONPATH."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import kvemu_localhost
    kvemu_localhost.install()
finally:
    del sys.path[0]
