# The formgrader service (instructors and TAs, at /services/formgrader/): nbgrader's formgrader
# over the course folder, with no kernels, no terminals, a read-only contents API, no
# configuration from a request, writes for instructors only, sanitised student work and a
# nonce CSP on every page (hub/course/formgrader.py says why).
from hub.settings import current

c = get_config()  # noqa: F821

c.ServerApp.root_dir = str(current("formgrader").course_root / "nbgrader")
c.ServerApp.default_url = "/formgrader"
c.ServerApp.terminals_enabled = False
c.ServerApp.contents_manager_class = "hub.course.formgrader.ReadOnlyContentsManager"
c.KernelSpecManager.allowed_kernelspecs = {"no-kernels-in-the-formgrader"}
c.ServerApp.jpserver_extensions = {
    "nbgrader.server_extensions.formgrader": True,
    "nbgrader.server_extensions.assignment_list": False,
    "nbgrader.server_extensions.course_list": False,
    "nbgrader.server_extensions.validate_assignment": False,
    "hub.course.formgrader": True,
}
