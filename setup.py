"""Builds the tlspump extension: the C core (csrc/sources.txt) + the binding."""
import os
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def core_sources():
    """The one list of core sources, shared with Makefile.PL."""
    with open(os.path.join(HERE, "csrc", "sources.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def binding_sources():
    d = os.path.join("python", "tlspump")
    return sorted(os.path.join(d, n) for n in os.listdir(os.path.join(HERE, d)) if n.endswith(".c"))


extra_compile = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                 "-Wno-missing-field-initializers"]
extra_link = []
if os.environ.get("TLSPUMP_SANITIZE"):
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    extra_compile += flags
    extra_link += flags
if os.environ.get("TLSPUMP_FAULT"):
    extra_compile.append("-DTP_FAULT_INJECTION=1")

setup(
    ext_modules=[
        Extension(
            "tlspump._tlspump",
            sources=core_sources() + binding_sources(),
            include_dirs=["csrc/include", "csrc"],
            define_macros=[("_GNU_SOURCE", "1")],
            libraries=["ssl", "crypto"],
            extra_compile_args=extra_compile,
            extra_link_args=extra_link,
        )
    ],
)
