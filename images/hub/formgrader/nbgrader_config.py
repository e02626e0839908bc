# nbgrader for the formgrader: the lab's configuration (course folder, gradebook, the exchange
# of hub/course/exchange.py, autograding in sandboxes), from hub/course/grading.py.
from hub.course.grading import lab_config

c = get_config()  # noqa: F821
c.merge(lab_config())
