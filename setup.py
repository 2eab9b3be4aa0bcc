"""The one compiled part: server/_srtpsend.c (SRTP protect + sendto of a forwarded copy).

Everything else is declared in pyproject.toml; setuptools reads C extensions from here.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("server._srtpsend", ["server/_srtpsend.c"], extra_compile_args=["-O2"])])
