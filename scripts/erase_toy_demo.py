"""Toy-world SPM demo (kept for old links): the demo lives in ``flowalign.erasure.toy_demo``.

    python scripts/erase_toy_demo.py --concept triangle --eta 2 --repeats 4
"""

from flowalign.erasure.toy_demo import main

if __name__ == "__main__":
    main()
