"""Hardware profiles: what a cart has and how capsight should use it."""

from capsight_edge.profile.loader import (
    default_profile_path,
    load_profile,
    profile_as_dict,
    profile_as_toml,
)
from capsight_edge.profile.schema import Profile

__all__ = ["Profile", "default_profile_path", "load_profile", "profile_as_dict", "profile_as_toml"]
