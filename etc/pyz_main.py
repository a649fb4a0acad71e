"""Entry point of statelessd.pyz: a clear refusal on a Python too old.

Locked-down hosts run whatever python3 their distribution ships, and the
bundled PyYAML and pika do not even parse below Python 3.8.  This file runs
before either is imported, so it keeps to syntax that every Python reads
and answers an old interpreter with one line and exit status 2 instead of
a traceback from inside the archive.
"""
import platform
import sys

#: The oldest Python statelessd runs on; setup.py's python_requires agrees.
FLOOR = (3, 8)


def main():
    if sys.version_info < FLOOR:
        sys.stderr.write('statelessd needs Python %d.%d or newer; this is '
                         'Python %s (%s)\n' % (FLOOR[0], FLOOR[1],
                                               platform.python_version(),
                                               sys.executable))
        return 2
    import statelessd
    return statelessd.main()


sys.exit(main())
