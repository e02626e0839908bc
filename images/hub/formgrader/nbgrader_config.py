# nbgrader for the formgrader: the lab's configuration (course folder, gradebook, the exchange
# of hub/exchange.py, autograding in sandboxes), from hub/grading.py.
from hub.grading import lab_config

c = get_config()  # noqa: F821
c.merge(lab_config())
