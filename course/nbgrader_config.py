# nbgrader's configuration of the course (02476 Machine Learning Operations): run nbgrader from
# this folder. Assignments live in source/<name>/<name>.ipynb; their release times are in
# calendar.yaml.
c = get_config()  # noqa: F821  (nbgrader provides get_config)

c.CourseDirectory.course_id = "mlops-02476"
# What students see in place of each solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# Every assignment runs offline on CPU in a few minutes; a cell that runs longer is stopped.
c.Execute.timeout = 300
