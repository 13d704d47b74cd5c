"""Build hook: ship `dllm_peft_lm_eval.pth`, the startup line that lets the plain `lm_eval --model dllm-peft` work.

Everything else about the package is in pyproject.toml. Released lm-eval versions read no plugin entry points, so a
`.pth` file in site-packages calls `dllm_peft.evaluation.registration.install()` at interpreter start (cheap: no torch,
no lm-eval import; see that module). The file is written at the root of the wheel, for normal and editable installs.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "dllm_peft_lm_eval.pth"  # sorts after setuptools' `__editable__.*.pth`, which makes dllm_peft importable
# One line, exec'd by `site` at every interpreter start. A file left behind by an older install whose module moved
# (0.1's `dllm_peft.harness`) or by an uninstalled package must stay silent rather than print a traceback.
PTH_LINE = (
    'import sys; exec("try:\\n import dllm_peft.evaluation.registration as hook\\nexcept ImportError:\\n hook = None\\n'
    'if hook:\\n hook.install()")\n'
)


class BuildPyWithStartupHook(build_py):
    """`build_py` that also writes the `.pth` file next to the packages, at the root of site-packages."""

    def run(self):
        super().run()
        # an editable wheel is assembled from the install directory that `editable_wheel` sets; a normal one from build_lib
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, PTH_NAME), "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, os.path.join(self.build_lib, PTH_NAME)]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
