"""The kernel that grades, installed in the course image. The kernel ``course-grading`` (``python -m lab_grading -f CONNECTION_FILE``) runs every graded
notebook: in the grading sandbox, in ``nbgrader validate`` (the Validate button) in students'
servers, and in the course's own tests. It differs from the plain Python kernel in two ways:

- What a cell writes to stderr arrives as ordinary output (``MergedOutStream``). nbgrader scores
  a test cell 0 when it writes anything to stderr, so a library's warning or a log line would
  otherwise cost points although every test passed. Errors still fail the cell.
- A student's cell cannot rewrite or silence the cells after it (``GradingKernel``). nbgrader runs
  the student's cells and the test cells in one kernel, so a cell could otherwise add an IPython
  input transformer that turns every later test into ``pass``, swallow errors with a custom
  exception handler, or patch the shell's methods. Before each cell the kernel puts IPython's
  transformers, exception handlers, cell events, the shell's and its own methods and the trace
  function back as they were at start. (Code that runs in the same process can always find
  another way in; this closes the known ones.)
- One thread for OpenMP, MKL and OpenBLAS (kernel.json): the sandbox has one CPU, and PyTorch's
  default of one thread per host CPU makes training there many times slower.
- It has the course image's packages only, as the grading sandbox does. Packages a student
  installed with ``pip install --user`` are not on its path, and importing one fails with a
  message that says so (``UserSiteHint``), instead of the notebook failing only when graded.

nbgrader and ipykernel have none of this, hence this module (no dependencies beyond the standard library and
ipykernel).
"""

from __future__ import annotations

import importlib.abc
import os
import site
import sys

from ipykernel.iostream import OutStream
from ipykernel.ipkernel import IPythonKernel

# Shell and kernel methods a cell could replace to change how later cells run or report.
SHELL_METHODS = ("run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code", "transform_cell",
                 "transform_ast", "should_run_async", "showtraceback", "_showtraceback", "showsyntaxerror",
                 "get_exception_only", "ex")
KERNEL_METHODS = ("do_execute", "execute_request", "dispatch_shell", "send_response")


class MergedOutStream(OutStream):
    """ipykernel's OutStream, with the stderr stream published as stdout."""

    def __init__(self, session, pub_thread, name, *args, **kwargs):
        super().__init__(session, pub_thread, "stdout" if name == "stderr" else name, *args, **kwargs)


class GradingKernel(IPythonKernel):
    """IPython's kernel that restores, before each cell, what a previous cell could have changed
    to rewrite or silence it (see the module's docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        sh = self.shell
        itm = sh.input_transformer_manager
        self._pristine = {
            "itm": itm,
            "cleanup": list(itm.cleanup_transforms), "line": list(itm.line_transforms),
            "token": list(itm.token_transformers), "post": list(sh.input_transformers_post),
            "ast": list(sh.ast_transformers), "events": {k: list(v) for k, v in sh.events.callbacks.items()},
            "shell": {(cls, name): cls.__dict__[name] for cls in type(sh).__mro__ for name in SHELL_METHODS
                      if name in cls.__dict__},
            "kernel": {(cls, name): cls.__dict__[name] for cls in type(self).__mro__ for name in KERNEL_METHODS
                       if name in cls.__dict__},
            "handler": self.shell_handlers.get("execute_request"),
        }

    def restore(self) -> None:
        p, sh = self._pristine, self.shell
        sys.settrace(None)
        for obj, names, saved in ((sh, SHELL_METHODS, p["shell"]), (self, KERNEL_METHODS, p["kernel"])):
            for cls in type(obj).__mro__:
                for name in names:
                    func = saved.get((cls, name))
                    if func is None and name in cls.__dict__:
                        delattr(cls, name)  # added by a cell
                    elif func is not None and cls.__dict__.get(name) is not func:
                        setattr(cls, name, func)
        for name in SHELL_METHODS:
            sh.__dict__.pop(name, None)
        for name in KERNEL_METHODS:
            self.__dict__.pop(name, None)
        self.shell_handlers["execute_request"] = p["handler"]
        sh.input_transformer_manager = itm = p["itm"]
        itm.cleanup_transforms[:] = p["cleanup"]
        itm.line_transforms[:] = p["line"]
        itm.token_transformers[:] = p["token"]
        sh.input_transformers_post[:] = p["post"]
        sh.ast_transformers[:] = p["ast"]
        sh.set_custom_exc((), None)
        for name in list(sh.events.callbacks):
            sh.events.callbacks[name][:] = p["events"].get(name, [])

    async def execute_request(self, stream, ident, parent):
        # Restores do_execute and everything it calls; the handler table holds this bound method.
        GradingKernel.restore(self)
        return await IPythonKernel.execute_request(self, stream, ident, parent)


class UserSiteHint(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: a top-level module found nowhere else but present in the user's
    own site-packages gets an ImportError that explains why it is not there."""

    def __init__(self, user_site: str):
        self.user_site = user_site

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or not self.user_site or not os.path.isdir(self.user_site):
            return None
        for entry in os.listdir(self.user_site):
            stem = entry.split(".", 1)[0].split("-", 1)[0]
            if stem == fullname and not entry.endswith((".dist-info", ".egg-info", ".pth")):
                __tracebackhide__ = True  # noqa: F841  (IPython leaves this frame out)
                raise ModuleNotFoundError(
                    f"'{fullname}': only your own pip install has it, grading does not. It is in "
                    f"{self.user_site}, which grading, offline in the course image, never sees: "
                    "use the course image's packages.",
                    name=fullname)
        return None


def main(argv: list[str] | None = None) -> None:
    """Start the kernel (``argv``: the kernel's arguments, ``-f CONNECTION_FILE`` and more). The
    grading sandbox's executor calls this in a process it forked from itself."""
    user_site = site.getusersitepackages()
    sys.path[:] = [p for p in sys.path if not p.startswith(user_site)]
    sys.meta_path.append(UserSiteHint(user_site))
    from ipykernel import kernelapp

    args = sys.argv[1:] if argv is None else argv
    kernelapp.launch_new_instance(argv=[*args, "--IPKernelApp.outstream_class=lab_grading.MergedOutStream",
                                        "--IPKernelApp.kernel_class=lab_grading.GradingKernel"])


if __name__ == "__main__":
    main()
