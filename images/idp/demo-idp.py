"""Start the demo identity providers, one process each, for the people of the demo roster:

- DTU by OpenID Connect: PyPI's oidc-provider-mock on :9400, each person with Entra-like claims
  (``preferred_username`` ``<id>@dtu.dk``, ``name``, ``email``);
- GitHub: the GitHub peer (``github_peer.py``) on :9401, with the roster's GitHub logins;
- DTU by CAS: the CAS 3.0 peer (``cas_peer.py``) on :9402.

Each also knows one outsider (DTU id s239999, GitHub login octo-unlinked), to show what someone
off the roster sees, and GitHub one account that took a roster login after the roster was
imported ("grace-hopper (re-registered)"), to show that a GitHub login is linked by its id. If any provider exits, this exits too, and Docker restarts the container.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hub.roster import parse_roster

roster = parse_roster(Path("/opt/lab/hub/demo-roster.csv").read_bytes(), "demo-roster.csv")
people = list(roster.people.values())
OUTSIDER, OUTSIDER_GITHUB = "s239999", "octo-unlinked"
# Someone else's account that now holds this roster login (renamed or re-registered): refused.
REREGISTERED = "grace-hopper"

oidc = [sys.executable, "-m", "oidc_provider_mock", "--host", "0.0.0.0", "--port", "9400"]
for p in people + [None]:
    pid, name, email = (p.id, p.name, p.email) if p else (OUTSIDER, "Otto Outsider", f"{OUTSIDER}@student.dtu.dk")
    claims = {"sub": pid, "preferred_username": f"{pid}@dtu.dk", "name": name, "email": email}
    oidc += ["--user-claims", json.dumps(claims)]
github = [sys.executable, "/opt/lab/github_peer.py", "--port", "9401", "--client", "mlops-lab-demo:demo-github"]
for login in [p.github for p in people if p.github] + [OUTSIDER_GITHUB]:
    github += ["--user", login]
github += ["--reregistered", REREGISTERED]
cas = [sys.executable, "/opt/lab/cas_peer.py", "--port", "9402"]
for pid in [p.id for p in people] + [OUTSIDER]:
    cas += ["--user", pid]

print(f"[demo-idp] demo people: {', '.join(p.id for p in people)} (and the outsider {OUTSIDER})", flush=True)
env = dict(os.environ, PYTHONWARNINGS="ignore")
procs = [subprocess.Popen(cmd, env=env) for cmd in (oidc, github, cas)]
while all(p.poll() is None for p in procs):
    time.sleep(1)
for p in procs:
    if p.poll() is None:
        p.terminate()
sys.exit(1)
