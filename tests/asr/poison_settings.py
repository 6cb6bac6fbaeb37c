"""The test settings, and a file that kills the worker decoding it (tests.asr.poison)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.asr.poison.PoisonConfig"]
