"""Builds kohakuvault._kvault through the project's CMake build.

`pip install --no-build-isolation .` calls this: CMake configures the whole
tree once in build/pyext (reused across installs), builds only the `_kvault`
target for the interpreter running pip, and the module is copied where
setuptools expects it.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("KV_PYEXT_BUILD_DIR", os.path.join(ROOT, "build", "pyext"))
        cfg = [
            "cmake", "-S", ROOT, "-B", build_dir,
            "-DKV_BUILD_TESTS=OFF", "-DKV_BUILD_PERF=OFF", "-DKV_BUILD_PYTHON=ON",
            f"-DKV_PYTHON={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.check_call(cfg, stdout=subprocess.DEVNULL)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "_kvault",
                               "-j", str(os.cpu_count() or 2)], stdout=subprocess.DEVNULL)
        built_dir = os.path.join(build_dir, "python", "kohakuvault")
        candidates = [f for f in os.listdir(built_dir) if f.startswith("_kvault") and f.endswith(".so")]
        if not candidates:
            raise RuntimeError(f"CMake did not produce _kvault in {built_dir}")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(built_dir, candidates[0]), dest)


setup(ext_modules=[Extension("kohakuvault._kvault", sources=[])],
      cmdclass={"build_ext": CMakeBuild})
