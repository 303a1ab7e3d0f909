"""The init image's ``netinit`` command. Dockerfile.init installs this file as ``/opt/venv/bin/netinit`` behind a
``#!/opt/venv/bin/python`` line (``bench.netinit_cold`` does the same in its venv), in place of pip's launcher.

pip's console-script launcher starts with ``import re`` (to tidy ``sys.argv[0]``): with the ``enum`` it pulls
in, about 5 ms of every pod's start, now that netinit's apply path imports no ``re`` of its own. This one imports
only netinit.
"""

from netinit.__main__ import main_entry

if __name__ == "__main__":
    main_entry()
