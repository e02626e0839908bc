"""The hub's configuration and spawner options, checked without Docker."""

import pytest
from jupyterhub.app import JupyterHub
from tornado import web
from traitlets.config import Config

from hub.config import apply
from hub.settings import load_settings
from hub.spawner import ContainerExited, CourseSpawner, docker_name

TOKEN = "b" * 64


def config_for(tmp_path, text="", **env):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    env.setdefault("LAB_COURSE_IMAGE", "mlops-lab/course:9.9.9")
    c = Config()
    apply(c, load_settings(path, environ=env))
    return c


class FakeUser:
    name = "s230001"
    escaped_name = "s230001"
    url = "/user/s230001/"
    id = 1


def spawner_for(c):
    return CourseSpawner(config=c, user=FakeUser(), _deprecated_db_session=None)


def test_home_is_a_named_volume_per_student(tmp_path):
    """Each student's home is the named volume <instance>-home-<username>."""
    s = spawner_for(config_for(tmp_path, LAB_INSTANCE="lab7"))
    assert s.volume_binds == {"lab7-home-s230001": {"bind": "/home/jovyan", "mode": "rw"}}


def test_limits_come_from_settings(tmp_path):
    """Memory and CPU limits from lab.yaml reach the spawner."""
    s = spawner_for(config_for(tmp_path, "spawner:\n  mem_limit: 3G\n  cpu_limit: 1.5\n"))
    assert s.mem_limit == 3 * 1024**3
    assert s.cpu_limit == 1.5


def test_image_is_pinned_and_others_refused(tmp_path):
    """Only the course image may run; a user_options image outside the list is a 400."""
    import asyncio

    s = spawner_for(config_for(tmp_path))
    assert s.image == "mlops-lab/course:9.9.9"
    assert s.allowed_images == {"course": "mlops-lab/course:9.9.9"}
    assert s.pull_policy == "never"
    assert asyncio.run(s.check_allowed("course")) == "mlops-lab/course:9.9.9"
    with pytest.raises(web.HTTPError) as info:
        asyncio.run(s.check_allowed("evil/root-shell:latest"))
    assert info.value.status_code == 400


def test_container_is_removed_on_stop_and_hardened(tmp_path):
    """Containers are removed on stop (homes kept), drop capabilities and cap processes."""
    s = spawner_for(config_for(tmp_path, "spawner:\n  pids_limit: 300\n"))
    assert s.remove is True
    host = s.extra_host_config
    assert host["cap_drop"] == ["ALL"]
    assert host["security_opt"] == ["no-new-privileges:true"]
    assert host["pids_limit"] == 300
    assert host["auto_remove"] is False  # logs of a crashed start stay readable
    assert "/var/run/docker.sock" not in str(s.volumes)


def test_containers_join_the_lab_network_and_are_labelled(tmp_path):
    """Student servers are on the named network, reached by internal IP, labelled by instance."""
    s = spawner_for(config_for(tmp_path, LAB_INSTANCE="lab7"))
    assert s.network_name == "lab7"
    assert s.use_internal_ip is True
    assert s.extra_create_kwargs["labels"]["mlops-lab.instance"] == "lab7"
    assert s.container_name == "lab7-s230001"


def test_network_can_differ_from_instance(tmp_path):
    """LAB_NETWORK overrides the network name."""
    s = spawner_for(config_for(tmp_path, LAB_NETWORK="campus-net"))
    assert s.network_name == "campus-net"


def test_demo_login_uses_the_demo_provider(tmp_path):
    """Demo mode: browsers go to the public IdP URL, the hub talks to the internal one."""
    c = config_for(tmp_path, LAB_IDP_PUBLIC_URL="http://lab.example:9400", LAB_PUBLIC_URL="https://lab.example")
    a = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == "generic-oauth"
    assert a.authorize_url == "http://lab.example:9400/oauth2/authorize"
    assert a.token_url == "http://idp:9400/oauth2/token"
    assert a.oauth_callback_url == "https://lab.example/hub/oauth_callback"
    assert a.allowed_users == {"s230001", "s230002", "s230003", "teacher"}
    assert a.admin_users == {"teacher"}
    assert "demo identity provider" in c.JupyterHub.template_vars["announcement_login"]


def test_real_provider_has_no_demo_notice(tmp_path):
    """With a real provider the demo notice and demo people are gone."""
    text = (
        "auth:\n  allowed_users: [s123456]\n  admin_users: [abc]\n  oidc:\n    client_id: lab\n"
        "    authorize_url: https://login.example.org/authorize\n"
        "    token_url: https://login.example.org/token\n"
        "    userdata_url: https://login.example.org/userinfo\n"
    )
    c = config_for(tmp_path, text, LAB_OIDC_CLIENT_SECRET="s3cret")
    a = c.GenericOAuthenticator
    assert a.client_secret == "s3cret"
    assert a.allowed_users == {"s123456"}
    assert a.admin_users == {"abc"}
    assert "announcement_login" not in c.JupyterHub.template_vars


def test_admin_token_becomes_a_service_with_admin_scopes(tmp_path):
    """LAB_ADMIN_API_TOKEN creates the lab-admin service for automation."""
    c = config_for(tmp_path, LAB_ADMIN_API_TOKEN=TOKEN)
    [svc] = [s for s in c.JupyterHub.services if s["name"] == "lab-admin"]
    assert svc["api_token"] == TOKEN
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == "lab-admin"]
    assert {"admin:users", "admin:servers", "access:servers"} <= set(role["scopes"])


def test_no_admin_token_no_admin_service(tmp_path):
    """Without a token there is no automation service at all."""
    c = config_for(tmp_path)
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "gpu-usage"]


def test_culler_settings_reach_its_command(tmp_path):
    """The idle culler runs with the configured timeout and maximum age."""
    c = config_for(tmp_path, "culler:\n  timeout: 600\n  every: 60\n  max_age: 7200\n")
    [culler] = [s for s in c.JupyterHub.services if s["name"] == "idle-culler"]
    assert "--timeout=600" in culler["command"]
    assert "--cull-every=60" in culler["command"]
    assert "--max-age=7200" in culler["command"]


def test_hub_accepts_the_generated_config(tmp_path):
    """JupyterHub itself loads the generated config without complaint."""
    c = config_for(tmp_path, LAB_ADMIN_API_TOKEN=TOKEN)
    hub = JupyterHub(config=c)
    assert hub.spawner_class is CourseSpawner
    assert hub.hub_connect_url == "http://hub:8081"


def test_container_exit_message_shows_log_lines():
    """The error a student sees carries the container's own last lines."""
    e = ContainerExited("lab-s1", 1, "lab-start: the home <dir> is not writable")
    assert e.status_code == 500
    assert "not writable" in e.jupyterhub_message
    assert "exit code 1" in str(e)
    assert "<pre>lab-start: the home &lt;dir&gt; is not writable</pre>" in e.jupyterhub_html_message


def test_docker_names_keep_the_username(tmp_path):
    """A user name with '-' or '.' names its volume and container unchanged, without escapes."""
    c = config_for(tmp_path, LAB_INSTANCE="lab7")
    user = FakeUser()
    user.name = user.escaped_name = "ab-c.d"
    s = CourseSpawner(config=c, user=user, _deprecated_db_session=None)
    assert s.container_name == "lab7-ab-c.d"
    assert list(s.volume_binds) == ["lab7-home-ab-c.d"]


def test_names_outside_the_pattern_are_still_escaped():
    """Defence in depth: a name the hub should have refused is escaped, never passed raw."""
    assert docker_name("Evil/../name") != "Evil/../name"
    assert "/" not in docker_name("Evil/../name")
