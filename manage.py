#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kikipounamu.settings")
    import django
    from django.core.management import execute_from_command_line

    django.setup()
    # This machine's folders and secret key, and the project's own Redis for the
    # commands that talk to it (settings only declare them).
    from kikipounamu import local

    local.prepare(redis=local.command_needs_redis(sys.argv))
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
