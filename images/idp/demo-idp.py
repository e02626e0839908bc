"""Start the demo OpenID Connect provider with the demo people of the lab's settings as buttons.

It reads the same lab.yaml as the hub (through hub.settings, so defaults and validation match),
then runs oidc-provider-mock with one --user per demo person.
"""
import os

from hub.settings import load_settings_or_exit
from oidc_provider_mock.__main__ import run

settings = load_settings_or_exit("demo-idp", {k: v for k, v in os.environ.items() if k == "LAB_SETTINGS_FILE"})

args = ["--host", "0.0.0.0", "--port", "9400"]
for person in settings.get("auth.demo.people"):
    args += ["--user", person]
print(f"[demo-idp] demo people: {', '.join(settings.get('auth.demo.people'))}", flush=True)
run(args)
