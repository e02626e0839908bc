"""The formgrader service's guard rails: it runs in the hub container as the grader user, for
instructors and TAs, so it may show and grade, but not run code or write files.

A Jupyter server normally gives whoever reaches it kernels, terminals and write access to its
files; a TA with those could, for example, drop an ``nbgrader_config.py`` into the course
folder. Kernels are off (no kernel spec is allowed), terminals are off, and the contents API is
read-only. nbgrader's own actions (generate, release, collect, autograde, feedback) keep working:
they go through the formgrader's API, and autograde runs students' code in sandboxes.
"""

from jupyter_server.services.contents.largefilemanager import LargeFileManager
from tornado import web


class ReadOnlyContentsManager(LargeFileManager):
    def _refuse(self, *args, **kwargs):
        raise web.HTTPError(403, "the course folder is read-only in the formgrader")

    save = _refuse
    delete_file = _refuse
    rename_file = _refuse
    new_untitled = _refuse
    copy = _refuse
