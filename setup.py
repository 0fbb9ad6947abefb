"""Builds kohakuvault's native parts through the project's CMake build.

`pip install --no-build-isolation .` calls this: CMake configures the whole
tree once in build/pyext (reused across installs; $KV_PYEXT_BUILD_DIR names
another build directory, e.g. the build/release of scripts/build, which is
then reused with its own configuration), builds the `_kvault` extension for
the interpreter running pip and the native programs `kvault-writer` and
`kvault-reader`. The module is copied where setuptools expects it, the
programs into the package's bin/ directory (kohakuvault/bin/), where the
console scripts of pyproject.toml and kohakuvault._writer find them.
`pip install -v` shows CMake's output.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = ("kvault-writer", "kvault-reader")   # CMake targets under workers/


def cached_python(build_dir):
    """KV_PYTHON of an existing CMake build directory, or None for a new one.
    (A venv's python is a link to the interpreter the build already uses:
    the cache is then left as it is, so a build directory shared with
    scripts/build never names a temporary venv.)"""
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("KV_PYTHON:"):
                    return line.split("=", 1)[1].strip()
    except FileNotFoundError:
        return None
    return ""


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("KV_PYEXT_BUILD_DIR", os.path.join(ROOT, "build", "pyext"))
        cfg = ["cmake", "-S", ROOT, "-B", build_dir, "-DKV_BUILD_PYTHON=ON"]
        cached = cached_python(build_dir)
        if cached is None:
            # A new build directory: only what the package needs, optimized.
            cfg += ["-DKV_BUILD_TESTS=OFF", "-DKV_BUILD_PERF=OFF", "-DCMAKE_BUILD_TYPE=Release"]
        if cached is None or os.path.realpath(cached) != os.path.realpath(sys.executable):
            cfg.append(f"-DKV_PYTHON={sys.executable}")
        subprocess.check_call(cfg)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "_kvault", *PROGRAMS,
                               "-j", str(min(os.cpu_count() or 2, 4))])
        built_dir = os.path.join(build_dir, "python", "kohakuvault")
        candidates = [f for f in os.listdir(built_dir) if f.startswith("_kvault") and f.endswith(".so")]
        if not candidates:
            raise RuntimeError(f"CMake did not produce _kvault in {built_dir}")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(built_dir, candidates[0]), dest)
        bin_dir = os.path.join(os.path.dirname(dest), "bin")
        os.makedirs(bin_dir, exist_ok=True)
        for name in PROGRAMS:
            shutil.copy2(os.path.join(build_dir, "workers", name), os.path.join(bin_dir, name))


setup(ext_modules=[Extension("kohakuvault._kvault", sources=[])],
      cmdclass={"build_ext": CMakeBuild})
