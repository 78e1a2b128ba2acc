"""Everything is in pyproject.toml; this file only ships the lm-eval `.pth` hook.

`decodesearch-lm-eval.pth` must sit at the top of site-packages (see
`decodesearch/integrations/lm_eval_plugin.py`), which pyproject metadata cannot express. build_py
writes it at the root of the build, so a wheel carries it; an editable install builds no package
tree, so there it goes straight into the editable wheel (setuptools points `install_lib` there).
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "decodesearch-lm-eval.pth"
# `site` executes a .pth line that starts with "import" at interpreter start.
PTH_LINE = "import decodesearch.integrations.lm_eval_plugin as plugin; plugin.install()\n"


class BuildPyWithPth(build_py):
    def _pth_target(self):
        if getattr(self, "editable_mode", False):
            root = self.distribution.get_command_obj("install").install_lib
        else:
            root = self.build_lib
        return os.path.join(root, PTH)

    def run(self):
        super().run()
        target = self._pth_target()
        self.mkpath(os.path.dirname(target))
        with open(target, "w") as f:
            f.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), self._pth_target()]


setup(cmdclass={"build_py": BuildPyWithPth})
