"""The kernel that grades, installed in the course image. The kernel ``course-grading`` (``python -m lab_grading -f CONNECTION_FILE``) runs every graded
notebook: in the grading sandbox, in ``nbgrader validate`` (the Validate button) in students'
servers, and in the course's own tests. It differs from the plain Python kernel in two ways:

- What a cell writes to stderr arrives as ordinary output (``MergedOutStream``). nbgrader scores
  a test cell 0 when it writes anything to stderr, so a library's warning or a log line would
  otherwise cost points although every test passed. Errors still fail the cell.
- It has the course image's packages only, as the grading sandbox does. Packages a student
  installed with ``pip install --user`` are not on its path, and importing one fails with a
  message that says so (``UserSiteHint``), instead of the notebook failing only when graded.

nbgrader has neither setting, hence this module (no dependencies beyond the standard library and
ipykernel).
"""

from __future__ import annotations

import importlib.abc
import os
import site
import sys

from ipykernel.iostream import OutStream


class MergedOutStream(OutStream):
    """ipykernel's OutStream, with the stderr stream published as stdout."""

    def __init__(self, session, pub_thread, name, *args, **kwargs):
        super().__init__(session, pub_thread, "stdout" if name == "stderr" else name, *args, **kwargs)


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


def main() -> None:
    user_site = site.getusersitepackages()
    sys.path[:] = [p for p in sys.path if not p.startswith(user_site)]
    sys.meta_path.append(UserSiteHint(user_site))
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=[*sys.argv[1:], "--IPKernelApp.outstream_class=lab_grading.MergedOutStream"])


if __name__ == "__main__":
    main()
