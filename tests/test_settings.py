"""Settings: sources, overrides, validation into ConfigError, and the key never leaking."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import example, given, strategies as st

from agent.errors import ConfigError
from agent.settings import load_settings

KEY = "k3y-Secret-0123456789abcdef"


def write_env(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.env"
    p.write_text(text)
    return p


def test_env_alone_is_enough(tmp_path):
    """With no config.env, environment variables alone build valid settings with defaults filled in."""
    s = load_settings({"IB_PROVIDER_KEY": KEY, "IB_PORT": "4002"}, None)
    assert s.provider_key.get_secret_value() == KEY
    assert s.ib_port == 4002 and s.ib_mode == "paper" and s.ib_client_id == 17
    assert s.sources["IB_PROVIDER_KEY"] == "environment" and s.sources["IB_HOST"] == "default"


def test_file_values_and_env_override(tmp_path):
    """The environment beats config.env, and the override is recorded with its source."""
    cfg = write_env(tmp_path, f"IB_PROVIDER_KEY=file-key-0123456789\nIB_MODE=live\nIB_CLIENT_ID=5\n")
    s = load_settings({"IB_PROVIDER_KEY": KEY}, cfg)
    assert s.provider_key.get_secret_value() == KEY
    assert s.ib_mode == "live" and s.ib_client_id == 5
    assert s.sources["IB_PROVIDER_KEY"] == "environment"
    assert s.sources["IB_MODE"] == "config.env"
    assert s.overridden == ("IB_PROVIDER_KEY",)
    assert "your environment" in s.key_source
    assert any("IB_PROVIDER_KEY comes from your environment and overrides config.env" in line
               for line in s.source_lines())


def test_key_source_names_config_file(tmp_path):
    """A key read from config.env names that file as its source."""
    cfg = write_env(tmp_path, f"IB_PROVIDER_KEY={KEY}\n")
    s = load_settings({}, cfg)
    assert s.sources["IB_PROVIDER_KEY"] == "config.env"
    assert str(cfg) in s.key_source and s.overridden == ()


def test_empty_env_var_counts_as_unset(tmp_path):
    """An empty environment variable does not override config.env (an undefined CI secret expands to '')."""
    cfg = write_env(tmp_path, f"IB_PROVIDER_KEY={KEY}\n")
    s = load_settings({"IB_PROVIDER_KEY": ""}, cfg)
    assert s.provider_key.get_secret_value() == KEY and s.sources["IB_PROVIDER_KEY"] == "config.env"


def test_candidate_ports_by_mode():
    """IB_PORT gives one port; otherwise paper and live each try TWS, Gateway and the README's swapped port."""
    assert load_settings({"IB_PROVIDER_KEY": KEY, "IB_PORT": "7496"}).candidate_ports() == [7496]
    assert load_settings({"IB_PROVIDER_KEY": KEY}).candidate_ports() == [7497, 4002, 7496]
    assert load_settings({"IB_PROVIDER_KEY": KEY, "IB_MODE": "LIVE"}).candidate_ports() == [7496, 4001, 7497]


@pytest.mark.parametrize("value", ["paper", "live", " Paper ", "LIVE", "\tlive\n"])
def test_ib_mode_paper_or_live_in_any_case_and_spacing(value):
    """IB_MODE=paper or live is read whatever its case and surrounding spaces."""
    assert load_settings({"IB_PROVIDER_KEY": KEY, "IB_MODE": value}).ib_mode == value.strip().lower()


@given(st.text(max_size=12).filter(lambda v: v.strip() and v.strip().lower() not in ("paper", "live")))
@example("foo")
@example("demo")
@example("papers")
@example("liv")
@example("paper live")
@example("p aper")
def test_ib_mode_is_only_paper_or_live(value):
    """Any other IB_MODE stops loading with a ConfigError naming IB_MODE and the value (the allow-list is exact)."""
    with pytest.raises(ConfigError) as ei:
        load_settings({"IB_PROVIDER_KEY": KEY, "IB_MODE": value})
    assert ei.value.setting == "IB_MODE" and ei.value.value == value


@pytest.mark.parametrize("name,value", [
    ("IB_PORT", "abc"), ("IB_PORT", "0"), ("IB_PORT", "70000"), ("IB_PORT", "7497.5"),
    ("IB_MODE", "demo"), ("IB_CLIENT_ID", "x1"), ("IB_CLIENT_ID", "-1"),
    ("RELAY_URL", "ws://example.com/ws/data-provider"), ("RELAY_URL", "http://127.0.0.1/x"),
    ("RELAY_URL", "not a url"), ("ALLOW_LIVE_ORDERS", "maybe"), ("IB_MAX_LINES", "0"),
    ("IB_MSG_RATE", "500"), ("IB_MSG_RATE", "nan"), ("IB_CONNECT_TIMEOUT", "-3"), ("LOG_LEVEL", "LOUD"),
    ("IB_HOST", "127.0.0.1:7497"), ("IB_LINE_MARGIN", "100"),
    ("IB_WARM_SECONDS", "0"), ("IB_WARM_SECONDS", "soon"), ("IB_WARM_LINES", "-1"), ("IB_WARM_LINES", "2.5"),
    ("IB_WARM_LINES", "90"),
])
def test_bad_value_names_setting(name, value):
    """Every bad value stops loading with a ConfigError naming the setting and the value, plus a fix."""
    with pytest.raises(ConfigError) as ei:
        load_settings({"IB_PROVIDER_KEY": KEY, name: value})
    assert ei.value.setting == name
    assert ei.value.value == value
    assert ei.value.fix and name in str(ei.value)


@pytest.mark.parametrize("key", ["your-api-key-here", "CHANGEME", "<paste key>", "xxxxxxxx", "abc12", "has space key1"])
def test_placeholder_or_bad_key_rejected(tmp_path, key):
    """A placeholder, short or spaced key is rejected, naming IB_PROVIDER_KEY but never echoing the value."""
    cfg = write_env(tmp_path, f'IB_PROVIDER_KEY="{key}"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings({}, cfg)
    assert ei.value.setting == "IB_PROVIDER_KEY" and ei.value.value is None
    assert key not in str(ei.value)


def test_missing_config_and_key_gives_download_guidance(monkeypatch, tmp_path):
    """No config.env and no key in the environment: the error says to download a fresh copy of the agent."""
    import agent.settings as st
    monkeypatch.setattr(st, "DEFAULT_CONFIG", tmp_path / "absent.env")
    with pytest.raises(ConfigError) as ei:
        load_settings({})
    assert ei.value.setting == "IB_PROVIDER_KEY"
    assert "config.env was not found" in str(ei.value) and "fresh copy" in str(ei.value)


def test_every_bad_setting_is_reported_at_once(monkeypatch, tmp_path):
    """No key and IB_PORT=abc and LOG_LEVEL=LOUD: the key's error is raised carrying the other two in .others."""
    import agent.settings as st
    monkeypatch.setattr(st, "DEFAULT_CONFIG", tmp_path / "absent.env")
    with pytest.raises(ConfigError) as ei:
        load_settings({"IB_PORT": "abc", "LOG_LEVEL": "LOUD"})
    assert ei.value.setting == "IB_PROVIDER_KEY"
    assert [(e.setting, e.value) for e in ei.value.others] == [("IB_PORT", "abc"), ("LOG_LEVEL", "LOUD")]
    assert all(e.fix for e in ei.value.others)


def test_warm_legs_settings_default_parse_and_turn_off():
    """IB_WARM_SECONDS / IB_WARM_LINES default to 60 s / 20 lines, are read from the environment, and 0 lines is off."""
    s = load_settings({"IB_PROVIDER_KEY": KEY})
    assert (s.warm_seconds, s.warm_lines) == (60.0, 20)
    s = load_settings({"IB_PROVIDER_KEY": KEY, "IB_WARM_SECONDS": "15", "IB_WARM_LINES": "0"})
    assert (s.warm_seconds, s.warm_lines) == (15.0, 0)
    assert s.sources["IB_WARM_LINES"] == "environment"


def test_warm_lines_must_leave_lines_for_the_other_flows():
    """IB_WARM_LINES as large as the agent's lines (IB_MAX_LINES - IB_LINE_MARGIN) is refused, saying the budget."""
    with pytest.raises(ConfigError) as ei:
        load_settings({"IB_PROVIDER_KEY": KEY, "IB_MAX_LINES": "30", "IB_LINE_MARGIN": "5", "IB_WARM_LINES": "25"})
    assert ei.value.setting == "IB_WARM_LINES" and "= 25" in str(ei.value)
    assert load_settings({"IB_PROVIDER_KEY": KEY, "IB_MAX_LINES": "30", "IB_LINE_MARGIN": "5",
                          "IB_WARM_LINES": "24"}).warm_lines == 24


def test_a_bad_max_lines_is_not_also_a_bad_margin():
    """IB_MAX_LINES=0 is one problem, not also 'IB_LINE_MARGIN leaves no lines'."""
    with pytest.raises(ConfigError) as ei:
        load_settings({"IB_PROVIDER_KEY": KEY, "IB_MAX_LINES": "0"})
    assert ei.value.setting == "IB_MAX_LINES" and ei.value.others == ()


def test_explicit_config_path_must_exist(tmp_path):
    """--config pointing at a missing file is a ConfigError naming --config."""
    with pytest.raises(ConfigError) as ei:
        load_settings({"IB_PROVIDER_KEY": KEY}, tmp_path / "nope.env")
    assert ei.value.setting == "--config"


def test_ws_to_loopback_is_allowed():
    """Plain ws:// is accepted only to this machine (the simulators), for IPv4, IPv6 and localhost."""
    for url in ("ws://127.0.0.1:8765/ws/data-provider", "ws://localhost:1/x", "ws://[::1]:9/x"):
        assert load_settings({"IB_PROVIDER_KEY": KEY, "RELAY_URL": url}).relay_url == url


def test_settings_frozen():
    """Settings cannot be changed after load: assigning a field is refused as a frozen instance, the value stays."""
    from pydantic import ValidationError
    s = load_settings({"IB_PROVIDER_KEY": KEY, "IB_PORT": "7497"})
    with pytest.raises(ValidationError) as ei:
        s.ib_port = 1  # type: ignore[misc]
    assert ei.value.errors()[0]["type"] == "frozen_instance" and s.ib_port == 7497


def test_key_never_in_str_repr_or_log(caplog):
    """The key appears in neither str(), repr(), model_dump_json() nor a logged settings object."""
    s = load_settings({"IB_PROVIDER_KEY": KEY})
    caplog.set_level(logging.DEBUG)
    logging.getLogger("agent.test").info("settings: %s %r", s, s)
    for text in (str(s), repr(s), s.model_dump_json(), caplog.text, s.key_source, "\n".join(s.source_lines())):
        assert KEY not in text and KEY[-4:] not in text


def test_relative_log_dir_is_beside_the_agent():
    """A relative LOG_DIR is resolved beside the agent, not in whatever folder it was started from."""
    from agent.settings import AGENT_DIR
    s = load_settings({"IB_PROVIDER_KEY": KEY, "LOG_DIR": "mylogs"})
    assert s.log_dir == AGENT_DIR / "mylogs"
    assert load_settings({"IB_PROVIDER_KEY": KEY}).log_dir == AGENT_DIR / "logs"


def test_unknown_config_names_are_reported_with_a_guess(tmp_path):
    """A misspelt name in config.env is listed at start-up with the closest known setting."""
    cfg = write_env(tmp_path, f"IB_PROVIDER_KEY={KEY}\nIB_PROT=7497\n")
    s = load_settings({}, cfg)
    assert s.unknown == ("IB_PROT",) and s.ib_port is None
    assert "config.env sets IB_PROT, which this agent does not use — did you mean IB_PORT?" in s.source_lines()
