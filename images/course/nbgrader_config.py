# nbgrader in students' servers: the Assignments panel talks to the lab's course service.
c = get_config()  # noqa: F821
import os

c.CourseDirectory.course_id = os.environ.get("LAB_COURSE_ID", "mlops-02476")
c.ExchangeFactory.list = "lab_exchange.LabList"
c.ExchangeFactory.fetch_assignment = "lab_exchange.LabFetchAssignment"
c.ExchangeFactory.submit = "lab_exchange.LabSubmit"
c.ExchangeFactory.fetch_feedback = "lab_exchange.LabFetchFeedback"
# Validation runs notebooks as grading does: the course image's packages only, and text on stderr
# (a library's warning) is output, not a failed test (images/course/lab_grading.py).
c.Execute.kernel_name = "course-grading"
# Every failing cell is reported, not only test cells: a failed import in an answer cell (say, of
# a package grading lacks) is the cause a student needs to see.
c.Validator.validate_all = True
