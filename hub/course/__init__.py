"""The course: everything of the lab that is about assignments rather than servers.

- ``calendar``: course/calendar.yaml (sessions, release and due times, the pass rule) and the course clock;
- ``exchange``: where released assignments, submissions and feedback live, and nbgrader's exchange over it;
- ``sandbox``: one notebook in a throw-away container; ``runner``: the root service that starts them;
- ``grading``: nbgrader configured for the lab, autograding with N workers (``python -m hub.course.grading``);
- ``grades``: the grades export and the pass rule;
- ``state``, ``pages``, ``service``: the course service (state and jobs, its HTML pages, its handlers);
- ``formgrader``: nbgrader's formgrader for staff, read-only for TAs, with sanitised student work;
- ``docs``: the student README and notebook headers written from the calendar (``python -m hub.course.docs``).

Who may do what is ``hub.permissions``; the settings are ``hub.settings``.
"""
