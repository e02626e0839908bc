"""Server profiles (CPU, shared GPU, whole GPU): their limits, who may use them, and the form.

KubeSpawner has ``profile_list``; DockerSpawner has no profiles, so the lab keeps its own small
version here: a profile is a named set of limits plus a GPU kind, restricted to everyone, to
admins, or to listed users and groups. Profiles whose GPU kind has no configured device are
hidden, not broken.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from .settings import GPU_KINDS, Settings


@dataclass(frozen=True)
class Profile:
    name: str
    display_name: str
    description: str
    gpu: str  # none | shared | whole
    access: object  # "all" | "admins" | list of user names and "group:NAME"
    mem_limit: str
    cpu_limit: float
    idle_timeout: int | None
    default: bool = False

    @property
    def gpu_modes(self) -> tuple[str, ...]:
        return GPU_KINDS[self.gpu]

    @property
    def group(self) -> str:
        """The hub group that holds the users currently running this profile (for culling)."""
        return f"profile-{self.name}"

    def allows(self, user: str, groups: set[str], admin: bool) -> bool:
        if self.access == "all":
            return True
        if admin:
            return True
        if self.access == "admins":
            return False
        return user in self.access or any(f"group:{g}" in self.access for g in groups)

    def summary(self) -> str:
        """Limits in words, e.g. '2 cores, 4G memory'."""
        cores = f"{self.cpu_limit:g} core{'s' if self.cpu_limit != 1 else ''}"
        return f"{cores}, {self.mem_limit} memory"

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def profiles_from_settings(settings: Settings) -> list[Profile]:
    """The enabled profiles, limits inherited from ``spawner.*``, GPU ones only if devices exist."""
    modes = {d["mode"] for d in settings.get("gpus.devices")}
    if settings.get("swarm.enabled"):
        modes.add("exclusive")  # a node's GPU that no entry names is a whole one (hub/swarm.py)
    out = []
    for name, p in settings.get("profiles").items():
        if not p.get("enabled", True):
            continue
        gpu = p.get("gpu", "none")
        if gpu != "none" and not modes & set(GPU_KINDS[gpu]):
            continue
        out.append(Profile(
            name=name,
            display_name=p["display_name"],
            description=p.get("description", ""),
            gpu=gpu,
            access=p.get("access", "all"),
            mem_limit=p.get("mem_limit", settings.get("spawner.mem_limit")),
            cpu_limit=float(p.get("cpu_limit", settings.get("spawner.cpu_limit"))),
            idle_timeout=p.get("idle_timeout"),
            default=bool(p.get("default", False)),
        ))
    return out


def render_form(choices: list[tuple[Profile, str]], selected: str) -> str:
    """Radio buttons, one per profile the user may use, each with its limits and availability."""
    rows = []
    for profile, availability in choices:
        pid = f"profile-{html.escape(profile.name)}"
        checked = " checked" if profile.name == selected else ""
        full = availability.startswith("0 of")
        note = f' <span class="lab-availability">{html.escape(availability)}</span>' if availability else ""
        idle = f" Stops after {profile.idle_timeout // 60 or 1} min without activity." if profile.idle_timeout else ""
        rows.append(
            f'<div class="radio lab-profile">'
            f'<label for="{pid}"><input type="radio" name="profile" id="{pid}" value="{html.escape(profile.name)}"'
            f'{checked}{" disabled" if full else ""}> <strong>{html.escape(profile.display_name)}</strong>'
            f' ({html.escape(profile.summary())}){note}<br><small>{html.escape(profile.description + idle)}</small>'
            f"</label></div>"
        )
    return '<div class="lab-profiles"><p>Choose the kind of server to start:</p>' + "\n".join(rows) + "</div>"
