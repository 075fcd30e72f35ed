#!/usr/bin/env python3
"""TEST STAND-IN for the Apache Mesos 1.11 master and agent binaries.

This is NOT Apache Mesos. mesobake's test suite installs it in place of
/usr/sbin/mesos-master and /usr/sbin/mesos-agent (or /usr/bin/... for the
AVENTER layout) because no real Mesos package can be downloaded where the tests
run. It does no scheduling at all. What it copies from the real binaries is the
part an image baker can get wrong:

* flag loading exactly like stout's FlagsBase::load(): only `--name=value`,
  `--name`, `--no-name`; `MESOS_*` environment variables merged in only for
  names not given on the command line; a flag given twice, an unknown
  command-line flag, a bad value or a missing required flag stops the process
  with stout's wording and exit status 1;
* the start-up checks of src/master/main.cpp and src/slave/main.cpp that turn a
  bad configuration into an immediate exit (--work_dir and --quorum for the
  replicated log, --master for the agent, the docker CLI for
  --containerizers=docker, binding --ip:--port, ...), in the same order;
* the host checks of the agent: systemd support on a cgroup v2-only host,
  and the cgroup v1 `cpu` hierarchy the Docker containerizer wants;
* leader election through ZooKeeper (json.info_ znodes, lowest sequence
  leads) and agents that register with the leader and follow it when it
  changes (over a stand-in-only HTTP call);
* ZooKeeper digest authentication from zk://user:password@... with the ACLs
  Mesos gives the znodes it creates (EVERYONE_READ_CREATOR_ALL, or
  OPEN_ACL_UNSAFE without credentials), and NoAuth as fatal as in Mesos
  ("Failed to detect a master: ...", "Failed to contend: ..."); the
  credentials are masked in every line the stand-in logs;
* the HTTP endpoints a deployment check looks at (/health, /state, /flags,
  /redirect, also under /master/ and /slave(1)/), with the flags the process
  ended up with, so a test can assert what the init wrapper passed;
* authentication driven by the real flags: --credentials / --credential /
  --http_credentials files in both of credentials.hpp's forms, agents and
  frameworks refused without a valid credential (the principal and secret
  travel in the stand-in's own registration calls; real Mesos runs CRAM-MD5),
  and HTTP basic authentication in the mesos-{master,agent}-{readonly,readwrite}
  realms.

See ci/standins/README.md for the real source of each behaviour.

It records its whole argv on stderr at start-up, so the journal of a test VM
shows what the wrapper built.

The syntax is kept to Python 3.4 (no f-strings, no subprocess.run) because the
stand-in is installed into guest images of every release mesobake targets,
down to Ubuntu 14.04.
"""

import base64
import datetime
import getpass
import http.server
import json
import os
import re
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

VERSION = "1.11.0"
BUILD_DATE = "2020-11-24 00:00:00"  # 1.11.0 was released in November 2020.
DOCKER_MIN_VERSION = (1, 8, 0)  # src/docker/docker.cpp: "1.8.0 or newer".


class FlagError(Exception):
    """A flag could not be loaded; the message is stout's."""


class Exit(Exception):
    """Ends the process like stout's EXIT(EXIT_FAILURE) or glog's LOG(FATAL)."""

    def __init__(self, message, level="E"):
        Exception.__init__(self, message)
        self.message = message
        self.level = level


# ---------------------------------------------------------------------------
# Flag values: parsing and stringification like stout.
# ---------------------------------------------------------------------------

_NANOS = {
    "ns": 1,
    "us": 1000,
    "ms": 1000 ** 2,
    "secs": 1000 ** 3,
    "mins": 60 * 1000 ** 3,
    "hrs": 3600 * 1000 ** 3,
    "days": 86400 * 1000 ** 3,
    "weeks": 7 * 86400 * 1000 ** 3,
}


def _numify_double(text):
    if not re.match(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", text):
        raise FlagError("Failed to convert '%s' to number" % text)
    return float(text)


def parse_duration(text):
    """stout Duration::parse(): digits and dots, then exactly one known unit."""
    index = 0
    while index < len(text):
        if text[index].isdigit() or text[index] == ".":
            index += 1
            continue
        value = _numify_double(text[:index])
        unit = text[index:]
        if unit not in _NANOS:
            raise FlagError(
                "Unknown duration unit '%s'; supported units are 'ns', 'us', "
                "'ms', 'secs', 'mins', 'hrs', 'days', and 'weeks'" % unit)
        return int(value * _NANOS[unit])
    raise FlagError("Invalid duration '%s'" % text)


def format_duration(nanos):
    """stout operator<<(Duration): the unit of the duration's size bucket, or
    the next smaller one when only that one gives a whole number."""
    magnitude = abs(nanos)
    sign = "-" if nanos < 0 else ""
    # (bucket limit, unit used inside the bucket, next smaller unit)
    buckets = [
        ("ms", "us", "ns"), ("secs", "ms", "us"), ("mins", "secs", "ms"),
        ("hrs", "mins", "secs"), ("days", "hrs", "mins"), ("weeks", "days", "hrs"),
    ]
    if magnitude < _NANOS["us"]:
        return "%s%dns" % (sign, magnitude)
    unit, smaller = "weeks", "days"
    for limit, bucket_unit, bucket_smaller in buckets:
        if magnitude < _NANOS[limit]:
            unit, smaller = bucket_unit, bucket_smaller
            break
    if magnitude % _NANOS[unit] != 0 and magnitude % _NANOS[smaller] == 0:
        unit = smaller
    return "%s%.15g%s" % (sign, magnitude / _NANOS[unit], unit)


def parse_bool(text):
    """stout parse<bool>()."""
    if text in ("true", "1"):
        return "true"
    if text in ("false", "0"):
        return "false"
    raise FlagError("Expecting a boolean (e.g., true or false)")


def _parse_integer(text, low, high):
    # stout's generic parse<T>() reads with an istringstream and insists on
    # reaching the end of the string: leading blanks pass, anything after the
    # digits does not.
    if not re.match(r"^\s*[+-]?\d+$", text):
        raise FlagError("Failed to convert into required type")
    value = int(text)
    if value < low or value > high:
        raise FlagError("Failed to convert into required type")
    return str(value)


def _parse_bytes(text):
    match = re.match(r"^(\d+(\.\d+)?)(B|KB|MB|GB|TB)$", text.strip())
    if not match:
        raise FlagError("Invalid bytes '%s'" % text)
    return text.strip()


def _parse_json(text):
    try:
        json.loads(text)
    except ValueError as error:
        raise FlagError(str(error))
    return text


# Kinds of flag value. Each entry: (parse function returning the stringified
# value, whether a `file://` value is read first like stout's fetch<T>()).
KINDS = {
    "string": (lambda text: text, True),
    # flags::SecurePathOrValue (--zk, --master): the file is read, but the flag
    # keeps printing as the file:// path so /flags does not leak its contents.
    "secure": (lambda text: text, True),
    # Path flags are never fetched (stout's fetch<Path> specialisation), but
    # stout's Path() drops a leading file:// (stout/path.hpp).
    "path": (lambda text: path_value(text), False),
    "bool": (parse_bool, False),
    "int": (lambda text: _parse_integer(text, -2 ** 31, 2 ** 31 - 1), True),
    "uint16": (lambda text: _parse_integer(text, 0, 65535), True),
    "uint": (lambda text: _parse_integer(text, 0, 2 ** 64 - 1), True),
    "double": (lambda text: "%.15g" % _numify_double(text), True),
    "duration": (lambda text: format_duration(parse_duration(text)), True),
    "bytes": (_parse_bytes, True),
    "json": (_parse_json, True),
}


class Flag(object):
    """One flag definition, mirroring stout's flags::Flag."""

    def __init__(self, name, kind="string", default=None, alias=None,
                 required=False, validate=None):
        self.name = name
        self.kind = kind
        self.default = default
        self.alias = alias
        self.required = required
        self.validate = validate

    @property
    def boolean(self):
        return self.kind == "bool"


def _validate_quorum(value):
    if value is not None and int(value) <= 0:
        return "Flag 'quorum' must be a positive integer, got '%s'" % value
    return None


def _validate_logging_level(value):
    # src/logging/flags.cpp.
    if value not in ("INFO", "WARNING", "ERROR"):
        return ("'%s' is not a valid logging level. Possible values for "
                "'logging_level' flag are: 'INFO', 'WARNING', 'ERROR'." % value)
    return None


def _validate_registry_strict(value):
    # src/master/flags.cpp: the flag is kept but disabled.
    if value == "true":
        return ("Support for '--registry_strict' has been disabled and will be "
                "removed in a future version of Mesos")
    return None


def _validate_agent_ping_timeout(value):
    # src/master/flags.cpp: between 1secs and 15mins.
    nanos = parse_duration(value)
    if nanos < _NANOS["secs"] or nanos > 15 * _NANOS["mins"]:
        return "Expected `--agent_ping_timeout` to be between 1secs and 15mins"
    return None


def _validate_max_agent_ping_timeouts(value):
    if int(value) < 1:
        return "Expected `--max_agent_ping_timeouts` to be at least 1"
    return None


def _validate_executor_reregistration_timeout(value):
    # src/slave/flags.cpp: at most MAX_EXECUTOR_REREGISTRATION_TIMEOUT.
    if parse_duration(value) > 15 * _NANOS["secs"]:
        return "Expected `--executor_reregistration_timeout` to be not more than 15secs"
    return None


def _validate_domain(value):
    # src/{master,slave}/flags.cpp: a domain must carry a fault domain.
    if value is not None and "fault_domain" not in json.loads(value):
        return "`domain` must define `fault_domain`"
    return None


def _default_launcher():
    # src/slave/flags.cpp: LinuxLauncher::available() ? "linux" : "posix";
    # the Linux launcher needs root and a cgroup hierarchy.
    if os.geteuid() == 0 and os.path.isdir("/sys/fs/cgroup"):
        return "linux"
    return "posix"


# stout's FlagsBase adds --help to every flag set; src/logging/flags.cpp adds
# the logging flags that master::Flags and slave::Flags both inherit.
LOGGING_FLAGS = [
    Flag("help", "bool", "false"),
    Flag("quiet", "bool", "false"),
    Flag("logging_level", default="INFO", validate=_validate_logging_level),
    Flag("log_dir"),
    Flag("logbufsecs", "int", "0"),
    Flag("initialize_driver_logging", "bool", "true"),
    Flag("external_log_file"),
]

# src/master/flags.cpp (Mesos 1.11; the flags a default `./configure` build
# has: max_executors_per_agent exists only with the port-mapping isolator).
# Each `alias` is a flags::DeprecatedName.
MASTER_FLAGS = LOGGING_FLAGS + [
    Flag("version", "bool", "false"),
    Flag("hostname"),
    Flag("hostname_lookup", "bool", "true"),
    Flag("root_submissions", "bool", "true"),
    Flag("work_dir"),
    Flag("registry", default="replicated_log"),
    Flag("quorum", "int", validate=_validate_quorum),
    Flag("zk_session_timeout", "duration", "10secs"),
    Flag("registry_strict", "bool", "false", validate=_validate_registry_strict),
    Flag("registry_fetch_timeout", "duration", "1mins"),
    Flag("registry_store_timeout", "duration", "20secs"),
    Flag("log_auto_initialize", "bool", "true"),
    Flag("agent_reregister_timeout", "duration", "10mins",
         alias="slave_reregister_timeout"),
    Flag("recovery_agent_removal_limit", default="100%",
         alias="recovery_slave_removal_limit"),
    Flag("agent_removal_rate_limit", alias="slave_removal_rate_limit"),
    Flag("webui_dir", default="/usr/share/mesos/webui"),
    Flag("whitelist", "path"),
    Flag("role_sorter", default="drf", alias="user_sorter"),
    Flag("framework_sorter", default="drf"),
    Flag("allocation_interval", "duration", "1secs"),
    Flag("cluster"),
    Flag("roles"),
    Flag("weights"),
    Flag("authenticate_frameworks", "bool", "false", alias="authenticate"),
    Flag("authenticate_agents", "bool", "false", alias="authenticate_slaves"),
    Flag("authentication_v0_timeout", "duration", "15secs"),
    Flag("authenticate_http_readwrite", "bool", "false", alias="authenticate_http"),
    Flag("authenticate_http_readonly", "bool", "false"),
    Flag("authenticate_http_frameworks", "bool", "false"),
    Flag("credentials", "path"),
    Flag("acls", "json"),
    Flag("firewall_rules", "json"),
    Flag("rate_limits", "json"),
    Flag("offer_timeout", "duration"),
    Flag("modules", "json"),
    Flag("modules_dir"),
    Flag("authenticators", default="crammd5"),
    Flag("allocator", default="hierarchical"),
    Flag("allocator_agent_recovery_factor", "double", "0.8"),
    Flag("allocator_recovery_timeout", "duration", "1mins"),
    Flag("fair_sharing_excluded_resource_names"),
    Flag("filter_gpu_resources", "bool", "true"),
    Flag("min_allocatable_resources", default="cpus:0.01|mem:32"),
    Flag("hooks"),
    Flag("agent_ping_timeout", "duration", "15secs", alias="slave_ping_timeout",
         validate=_validate_agent_ping_timeout),
    Flag("max_agent_ping_timeouts", "uint", "5", alias="max_slave_ping_timeouts",
         validate=_validate_max_agent_ping_timeouts),
    Flag("authorizers", default="local"),
    Flag("http_authenticators", default="basic"),
    Flag("http_framework_authenticators"),
    Flag("max_operator_event_stream_subscribers", "uint", "1000"),
    Flag("max_completed_frameworks", "uint", "50"),
    Flag("max_completed_tasks_per_framework", "uint", "1000"),
    Flag("max_unreachable_tasks_per_framework", "uint", "1000"),
    Flag("master_contender"),
    Flag("master_detector"),
    Flag("registry_gc_interval", "duration", "15mins"),
    Flag("registry_max_agent_age", "duration", "2weeks"),
    Flag("registry_max_agent_count", "uint", "102400"),
    Flag("ip"),
    Flag("port", "uint16", "5050"),
    Flag("advertise_ip"),
    Flag("advertise_port"),
    Flag("memory_profiling", "bool", "false"),
    Flag("zk", "secure"),
    Flag("ip_discovery_command"),
    Flag("require_agent_domain", "bool", "false"),
    Flag("publish_per_framework_metrics", "bool", "true"),
    Flag("domain", "json", validate=_validate_domain),
    Flag("offer_constraints_re2_max_mem", "bytes", "4MB"),
    Flag("offer_constraints_re2_max_program_size", "uint", "100"),
]

# src/slave/flags.cpp (Mesos 1.11, Linux, default `./configure` build: the
# flags behind --enable-ssl, --enable-port-mapping-isolator,
# --enable-network-ports-isolator, --enable-xfs-disk-isolator and
# --enable-seccomp-isolator are not there). work_dir is a plain std::string
# without a default, which makes stout require it.
AGENT_FLAGS = LOGGING_FLAGS + [
    Flag("hostname"),
    Flag("hostname_lookup", "bool", "true"),
    Flag("version", "bool", "false"),
    Flag("resources"),
    Flag("resource_provider_config_dir"),
    Flag("csi_plugin_config_dir"),
    Flag("disk_profile_adaptor"),
    Flag("isolation", default="posix/cpu,posix/mem"),
    Flag("launcher", default=_default_launcher()),
    Flag("image_providers"),
    Flag("image_provisioner_backend"),
    Flag("image_gc_config", "json"),
    Flag("appc_simple_discovery_uri_prefix", default="http://"),
    Flag("appc_store_dir", default="/tmp/mesos/store/appc"),
    Flag("docker_registry", default="https://registry-1.docker.io"),
    Flag("docker_store_dir", default="/tmp/mesos/store/docker"),
    Flag("docker_volume_checkpoint_dir",
         default="/var/run/mesos/isolators/docker/volume"),
    Flag("docker_volume_chown", "bool", "false"),
    Flag("docker_ignore_runtime", "bool", "false"),
    Flag("default_role", default="*"),
    Flag("attributes"),
    Flag("fetcher_cache_size", "bytes", "2GB"),
    Flag("fetcher_cache_dir", default="/tmp/mesos/fetch"),
    Flag("fetcher_stall_timeout", "duration", "1mins"),
    Flag("work_dir", required=True),
    Flag("runtime_dir", default="/var/run/mesos"),
    Flag("launcher_dir", default="/usr/libexec/mesos"),
    Flag("hadoop_home", default=""),
    Flag("switch_user", "bool", "true"),
    Flag("volume_gid_range"),
    Flag("http_heartbeat_interval", "duration", "30secs"),
    Flag("frameworks_home", default=""),
    Flag("registration_backoff_factor", "duration", "1secs"),
    Flag("authentication_backoff_factor", "duration", "1secs"),
    Flag("authentication_timeout_min", "duration", "5secs"),
    Flag("authentication_timeout_max", "duration", "1mins"),
    Flag("executor_environment_variables", "json"),
    Flag("executor_registration_timeout", "duration", "1mins"),
    Flag("executor_reregistration_timeout", "duration", "2secs",
         validate=_validate_executor_reregistration_timeout),
    Flag("executor_reregistration_retry_interval", "duration"),
    Flag("executor_shutdown_grace_period", "duration", "5secs"),
    Flag("gc_delay", "duration", "1weeks"),
    Flag("gc_disk_headroom", "double", "0.1"),
    Flag("gc_non_executor_container_sandboxes", "bool", "false"),
    Flag("disk_watch_interval", "duration", "1mins"),
    Flag("container_logger"),
    Flag("recover", default="reconnect"),
    Flag("recovery_timeout", "duration", "15mins"),
    Flag("reconfiguration_policy", default="equal"),
    Flag("strict", "bool", "true"),
    Flag("max_completed_executors_per_framework", "uint", "150"),
    Flag("cgroups_destroy_timeout", "duration", "1mins"),
    Flag("cgroups_hierarchy", default="/sys/fs/cgroup"),
    Flag("cgroups_root", default="mesos"),
    Flag("cgroups_enable_cfs", "bool", "false"),
    Flag("cgroups_limit_swap", "bool", "false"),
    Flag("cgroups_cpu_enable_pids_and_tids_count", "bool", "false"),
    Flag("cgroups_net_cls_primary_handle"),
    Flag("cgroups_net_cls_secondary_handles"),
    Flag("allowed_devices", "json"),
    Flag("agent_subsystems", alias="slave_subsystems"),
    Flag("host_path_volume_force_creation"),
    Flag("nvidia_gpu_devices"),
    Flag("perf_events"),
    Flag("perf_interval", "duration", "1mins"),
    Flag("perf_duration", "duration", "10secs"),
    Flag("revocable_cpu_low_priority", "bool", "true"),
    Flag("systemd_enable_support", "bool", "true"),
    Flag("systemd_runtime_directory", default="/run/systemd/system"),
    Flag("effective_capabilities", "json", alias="allowed_capabilities"),
    Flag("bounding_capabilities", "json"),
    Flag("default_container_shm_size", "bytes"),
    Flag("disallow_sharing_agent_ipc_namespace", "bool", "false"),
    Flag("disallow_sharing_agent_pid_namespace", "bool", "false"),
    Flag("agent_features", "json"),
    Flag("firewall_rules", "json"),
    Flag("credential", "path"),
    Flag("acls", "json"),
    Flag("containerizers", default="mesos"),
    Flag("docker", default="docker"),
    Flag("docker_remove_delay", "duration", "6hrs"),
    Flag("docker_kill_orphans", "bool", "true"),
    Flag("docker_mesos_image"),
    Flag("docker_socket", default="/var/run/docker.sock"),
    Flag("docker_config", "json"),
    Flag("sandbox_directory", default="/mnt/mesos/sandbox"),
    Flag("domain_socket_location"),
    Flag("default_container_dns", "json"),
    Flag("default_container_info", "json"),
    Flag("docker_stop_timeout", "duration", "0ns"),
    Flag("network_cni_plugins_dir"),
    Flag("network_cni_config_dir"),
    Flag("network_cni_root_dir_persist", "bool", "false"),
    Flag("network_cni_metrics", "bool", "true"),
    Flag("container_disk_watch_interval", "duration", "15secs"),
    Flag("enforce_container_disk_quota", "bool", "false"),
    Flag("modules", "json"),
    Flag("modules_dir"),
    Flag("authenticatee", default="crammd5"),
    Flag("authorizer", default="local"),
    Flag("http_authenticators"),
    Flag("authenticate_http_readwrite", "bool", "false"),
    Flag("authenticate_http_readonly", "bool", "false"),
    Flag("http_executor_domain_sockets", "bool", "false"),
    Flag("http_credentials", "path"),
    Flag("hooks"),
    Flag("secret_resolver"),
    Flag("resource_estimator"),
    Flag("qos_controller"),
    Flag("qos_correction_interval_min", "duration", "0ns"),
    Flag("oversubscribed_resources_interval", "duration", "15secs"),
    Flag("master_detector"),
    Flag("http_command_executor", "bool", "false"),
    Flag("ip"),
    Flag("ip6"),
    Flag("port", "uint16", "5051"),
    Flag("advertise_ip"),
    Flag("advertise_port"),
    Flag("master", "secure"),
    Flag("zk_session_timeout", "duration", "10secs"),
    Flag("ip_discovery_command"),
    Flag("ip6_discovery_command"),
    Flag("memory_profiling", "bool", "false"),
    Flag("domain", "json", validate=_validate_domain),
]


class LoadedFlags(object):
    """The outcome of FlagsBase::load(): values by canonical name."""

    def __init__(self, definitions):
        self.definitions = dict((flag.name, flag) for flag in definitions)
        self.aliases = dict((flag.alias, flag.name) for flag in definitions if flag.alias)
        self.loaded_name = {}  # canonical name -> the name it was loaded under
        self.values = {}  # canonical name -> stringified value
        self.raw = {}  # canonical name -> value as used (file:// contents read)
        self.warnings = []
        for flag in definitions:
            if flag.default is not None:
                self.values[flag.name] = KINDS[flag.kind][0](flag.default)
                self.raw[flag.name] = self.values[flag.name]

    def get(self, name):
        return self.raw.get(name)

    def given(self, name):
        return name in self.loaded_name

    def true(self, name):
        return self.raw.get(name) == "true"

    def as_json(self):
        """What /flags shows: every flag with a value, under its effective name."""
        result = {}
        for name, value in self.values.items():
            result[self.loaded_name.get(name, name)] = value
        return result

    def startup_line(self):
        """stout operator<<(FlagsBase): --name="value" in name order."""
        return " ".join(
            '--%s="%s"' % (self.loaded_name.get(name, name), self.values[name])
            for name in sorted(self.values))


def command_line_values(argv):
    """Reads argv like stout's load(prefix, argc, argv): only `--` words count.

    A word that does not start with `--` is skipped, so `--port 5050` loads
    `port` without a value (an error for a non-boolean flag) and drops `5050`.
    """
    values = []
    for word in argv:
        arg = word.strip(" \t\n\r")
        if arg == "--":
            break
        if not arg.startswith("--"):
            continue
        eq = arg.find("=")
        if eq < 0:
            name, value = arg[2:], None
        else:
            name, value = arg[2:eq], arg[eq + 1:]
        values.append((name.lower(), value))
    return values


def environment_values(flags, environ, prefix="MESOS_"):
    """stout's FlagsBase::extract(): only names of known flags are taken.

    Unknown MESOS_* variables (MESOS_NATIVE_JAVA_LIBRARY, ...) are ignored.
    """
    values = {}
    for key, value in environ.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):].lower()
        flag_name = name[3:] if name.startswith("no-") else name
        if flag_name in flags.definitions or flag_name in flags.aliases:
            values[name] = value
    return values


def load_flags(definitions, argv, environ):
    """stout FlagsBase::load(values, unknowns=false, duplicates=false, prefix)."""
    flags = LoadedFlags(definitions)
    values = command_line_values(argv)
    given = set(name for name, _ in values)
    for name, value in environment_values(flags, environ).items():
        if name not in given:
            values.append((name, value))
    # stout keeps the values in a Multimap, i.e. a std::multimap: walked in
    # name order, same-name entries in insertion order (sort() is stable).
    values.sort(key=lambda item: item[0])

    for name, value in values:
        negated = name.startswith("no-")
        flag_name = name[3:] if negated else name
        canonical = flags.aliases.get(flag_name, flag_name)
        flag = flags.definitions.get(canonical)
        if flag is None:
            raise FlagError("Failed to load unknown flag '%s'%s" % (
                flag_name, " via '%s'" % name if negated else ""))
        if canonical in flags.loaded_name:
            raise FlagError("Flag '%s' is already loaded via name '%s'" % (
                flag_name, flags.loaded_name[canonical]))
        if not flag.boolean:
            if negated:
                raise FlagError("Failed to load non-boolean flag '%s' via '%s'"
                                % (flag_name, name))
            if value is None:
                raise FlagError("Failed to load non-boolean flag '%s': Missing value"
                                % flag_name)
            text = value
        elif value is None or value == "":
            text = "false" if negated else "true"
        elif not negated:
            text = value
        else:
            raise FlagError("Failed to load boolean flag '%s' via '%s' with value '%s'"
                            % (flag_name, name, value))
        try:
            shown, used = _load_value(flag, text)
        except FlagError as error:
            raise FlagError("Failed to load flag '%s': Failed to load value '%s': %s"
                            % (flag_name, text, error))
        flags.values[canonical] = shown
        flags.raw[canonical] = used
        flags.loaded_name[canonical] = flag_name
        if flag_name != canonical:
            flags.warnings.append("Loaded deprecated flag '%s'" % flag_name)

    for name in sorted(flags.definitions):
        flag = flags.definitions[name]
        if flag.required and name not in flags.loaded_name:
            raise FlagError("Flag '%s' is required, but it was not provided" % name)
        if flag.validate is not None and name in flags.raw:
            message = flag.validate(flags.raw[name])
            if message is not None:
                raise FlagError(message)
    return flags


def _load_value(flag, text):
    """Returns (value shown by /flags, value the process uses)."""
    parse, fetch = KINDS[flag.kind]
    if fetch and text.startswith("file://"):
        path = text[len("file://"):]
        try:
            with open(path) as handle:
                contents = handle.read()
        except (IOError, OSError) as error:
            raise FlagError("Error reading file '%s': %s" % (path, error.strerror))
        used = parse(contents)
        return (text if flag.kind == "secure" else used), used
    used = parse(text)
    return used, used


# ---------------------------------------------------------------------------
# Logging like glog, plus the stand-in's own argv record.
# ---------------------------------------------------------------------------

class Log(object):
    LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
    THRESHOLDS = {"INFO": 0, "WARNING": 1, "ERROR": 2}

    def __init__(self, program):
        self.program = program
        self.level = 0
        self.quiet = False
        self.file = None
        self.lock = threading.Lock()

    def initialize(self, flags):
        """src/logging/logging.cpp: the log dir is created, or the process exits."""
        self.level = self.THRESHOLDS[flags.get("logging_level")]
        self.quiet = flags.true("quiet")
        log_dir = flags.get("log_dir")
        if log_dir is None:
            return
        try:
            os.makedirs(log_dir, exist_ok=True)
            now = datetime.datetime.now()
            name = "%s.%s.%s.log.INFO.%s.%d" % (
                self.program, socket.gethostname(), getpass.getuser(),
                now.strftime("%Y%m%d-%H%M%S"), os.getpid())
            self.file = open(os.path.join(log_dir, name), "a")
            # glog keeps <program>.INFO pointing at the newest file.
            link = os.path.join(log_dir, self.program + ".INFO")
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(name, link)
        except OSError as error:
            raise Exit("Could not initialize logging: Failed to create log "
                       "directory '%s': %s" % (log_dir, error.strerror))

    def line(self, level, message):
        message = redact(message)
        now = datetime.datetime.now()
        caller = sys._getframe(2)
        text = "%s%s %s %5d %s:%d] %s\n" % (
            level, now.strftime("%m%d"), now.strftime("%H:%M:%S.%f"),
            os.getpid(),
            os.path.basename(caller.f_code.co_filename), caller.f_lineno, message)
        with self.lock:
            if self.LEVELS[level] >= self.level and not self.quiet:
                sys.stderr.write(text)
                sys.stderr.flush()
            if self.file is not None and self.LEVELS[level] >= self.level:
                self.file.write(text)
                self.file.flush()

    def info(self, message):
        self.line("I", message)

    def warning(self, message):
        self.line("W", message)

    def error(self, message):
        self.line("E", message)

    def exit(self, error):
        """The last line before exiting: EXIT(EXIT_FAILURE) or LOG(FATAL)."""
        if error.level == "F":
            self.line("F", error.message)
        else:
            self.line("E", "EXIT with status 1: " + error.message)


# The credentials of a ZooKeeper URL, zk://user:password@servers/path: what
# zookeeper::URL::parse() takes for them runs to the last '@' before the path.
_ZK_CREDENTIALS = re.compile(r"zk://[^/]*@")


def redact(text):
    """Masks the credentials of every ZooKeeper URL in a log line.

    NOT what Mesos does: it prints --zk and --master as given (stout's
    SecurePathOrValue prints the value when it was not a file), so the
    "Flags at startup" line of a real master carries the ZooKeeper password.
    The stand-in never logs one; it masks them the way Marathon's
    ZkUrl.redactedConnectionString does. /flags and /state still show the
    flags as Mesos does."""
    return _ZK_CREDENTIALS.sub("zk://xxxxxxxx:xxxxxxxx@", text)


def record_argv(program, argv):
    # Not something Mesos prints: it is there so that a test VM's journal shows
    # exactly which flags the init wrapper passed. Always written, whatever
    # --logging_level or --quiet say. ZooKeeper credentials are masked.
    sys.stderr.write("mesos-standin: %s argv: %s\n"
                     % (program, json.dumps([redact(arg) for arg in argv])))
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# Checks that real Mesos makes before it serves.
# ---------------------------------------------------------------------------

def parse_ipv4(text, variable):
    """libprocess: net::IP::parse(LIBPROCESS_IP, AF_INET) or LOG(FATAL)."""
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        raise Exit("Parsing %s=%s failed: Failed to parse IP address '%s'"
                   % (variable, text, text), level="F")
    return text


def check_advertise(flags):
    if flags.get("advertise_ip") is not None:
        parse_ipv4(flags.get("advertise_ip"), "LIBPROCESS_ADVERTISE_IP")
    port = flags.get("advertise_port")
    if port is not None:
        if not re.match(r"^\d+$", port.strip()) or int(port) > 65535:
            raise Exit("LIBPROCESS_ADVERTISE_PORT=%s is not a valid port" % port, level="F")


def resolve_ip(flags):
    """The --ip / --ip_discovery_command handling of main.cpp."""
    if flags.get("ip_discovery_command") is not None and flags.get("ip") is not None:
        raise Exit("Only one of `--ip` or `--ip_discovery_command` should be specified")
    if flags.get("ip_discovery_command") is not None:
        command = flags.get("ip_discovery_command")
        process = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        out, err = process.communicate()
        if process.returncode != 0:
            raise Exit("Failed to execute '%s': exited with status %d: %s"
                       % (command, process.returncode, err.decode(errors="replace").strip()))
        return parse_ipv4(out.decode().strip(), "LIBPROCESS_IP")
    if flags.get("ip") is not None:
        return parse_ipv4(flags.get("ip"), "LIBPROCESS_IP")
    return None


def parse_zk_url(url):
    """zookeeper::URL::parse(): zk://[auth@]host:port[,host:port...]/path."""
    url = url.strip()
    if not url.startswith("zk://"):
        raise Exit("Error parsing ZooKeeper URL: Expecting 'zk://' at the beginning of the URL")
    rest = url[len("zk://"):]
    slash = rest.find("/")
    if slash <= 0:
        raise Exit("Error parsing ZooKeeper URL: Expecting servers and a path in '%s'" % url)
    return rest[:slash], rest[slash:]


class Bound(object):
    """The listening socket, opened where libprocess would bind it."""

    def __init__(self, server, ip, port):
        self.server = server
        self.ip = ip
        self.port = port


def bind(ip, port, handler):
    """process::initialize(): a failed bind is LOG(FATAL) in libprocess."""
    bind_ip = ip if ip is not None else "0.0.0.0"
    try:
        server = _Server((bind_ip, port), handler)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise Exit("Failed to initialize: Failed to bind on %s:%d: %s: %s [%d]"
                   % (bind_ip, port, reason, reason, error.errno or 0), level="F")
    port = server.server_address[1]
    if ip is None:
        # Bound to every address: libprocess advertises the host name's address.
        try:
            ip = socket.gethostbyname(socket.gethostname())
        except OSError:
            ip = "127.0.0.1"
    return Bound(server, ip, port)


def advertised(flags, bound):
    ip = flags.get("advertise_ip") or bound.ip
    port = int(flags.get("advertise_port") or bound.port)
    return ip, port


def resolve_hostname(flags, ip):
    """Master::initialize() / Slave::initialize(): --hostname, else a lookup."""
    if flags.get("hostname") is not None:
        return flags.get("hostname")
    if not flags.true("hostname_lookup"):
        return ip
    try:
        # stout net::getHostname(): getnameinfo() without NI_NAMEREQD, so an
        # address without a name comes back as the address itself.
        return socket.getnameinfo((ip, 0), 0)[0]
    except OSError as error:
        raise Exit("Failed to get hostname: %s" % error)


def make_dir(path, what):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise Exit("Failed to create %s '%s': %s" % (what, path, error.strerror))


# ---------------------------------------------------------------------------
# The host the agent inspects: cgroups, systemd, the package flavour.
# ---------------------------------------------------------------------------

# Test hook, not in Mesos: re-roots /proc/mounts, /sys/fs/cgroup,
# /run/systemd/system and /sbin/init under this directory, so a test on any
# host can show the agent a cgroup v1, hybrid or v2-only machine.
SYSROOT_ENV = "MESOS_STANDIN_SYSROOT"

EXECUTORS_SLICE = "mesos_executors.slice"


def sysroot(path):
    root = os.environ.get(SYSROOT_ENV)
    if not root:
        return path
    return os.path.join(root, path.lstrip("/"))


def flavour():
    """Which build the package copies: `apache` (Mesosphere's mesos, built
    from Apache Mesos 1.11) or `aventer` (AVENTER's clusterd). build.sh writes
    it next to this file."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "flavour")) as handle:
            return handle.read().strip() or "apache"
    except (IOError, OSError):
        return "apache"


def _mount_field(text):
    # /proc/mounts escapes blanks and backslashes as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mount_table():
    """fs::MountTable::read("/proc/mounts"): (dir, type, options)."""
    entries = []
    try:
        with open(sysroot("/proc/mounts")) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 4:
                    entries.append((_mount_field(fields[1]), fields[2], fields[3].split(",")))
    except (IOError, OSError) as error:
        raise Exit("Failed to read mount table: %s" % error.strerror)
    return entries


def cgroups_mounted(hierarchy, subsystems=()):
    """src/linux/cgroups.cpp mounted(): the path is the mount point of a
    cgroup (v1) file system with every subsystem attached. A cgroup2 mount
    never counts."""
    path = sysroot(hierarchy)
    if not os.path.exists(path):
        return False
    real = os.path.realpath(path)
    found = None
    for directory, kind, options in mount_table():
        if kind == "cgroup" and os.path.realpath(sysroot(directory)) == real:
            found = options
    if found is None:
        return False
    return all(subsystem in found for subsystem in subsystems)


def cgroups_hierarchy_with(subsystem):
    """cgroups::hierarchy(subsystems): a mounted v1 hierarchy that has it."""
    for directory, kind, options in mount_table():
        if kind == "cgroup" and subsystem in options:
            return directory
    return None


def systemd_exists(log):
    """src/linux/systemd.cpp exists(): /sbin/init resolves to a program whose
    `--version` starts with `systemd <number>`."""
    init = sysroot("/sbin/init")
    if not os.path.exists(init):
        log.warning("Failed to test /sbin/init for systemd environment: does not exist")
        return False
    command = "%s --version" % os.path.realpath(init)
    try:
        process = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, _ = process.communicate(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        log.warning("Failed to test command '%s'" % command)
        return False
    if process.returncode != 0:
        log.warning("Failed to test command '%s'" % command)
        return False
    tokens = out.decode(errors="replace").split()
    if len(tokens) < 2 or tokens[0] != "systemd":
        return False
    if not re.match(r"^\d+$", tokens[1]):
        log.warning("Failed to parse systemd version '%s'" % tokens[1])
        return False
    log.info("systemd version `%s` detected" % tokens[1])
    return True


def _shell(command):
    process = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = process.communicate()
    if process.returncode != 0:
        raise OSError("Failed to execute '%s'; the command was either not found or "
                      "exited with a non-zero exit status: %d"
                      % (command, process.returncode))
    return out


def systemd_initialize(flags, log):
    """src/slave/main.cpp: `--systemd_enable_support` on a systemd host runs
    systemd::initialize() (src/linux/systemd.cpp): the runtime directory, the
    executors slice (written, daemon-reload, started) and then
    cgroups::verify(<cgroups_hierarchy>/systemd, mesos_executors.slice)."""
    prefix = "Failed to initialize systemd: "
    runtime = flags.get("systemd_runtime_directory")
    if not os.path.exists(sysroot(runtime)):
        raise Exit(prefix + "Failed to locate systemd runtime directory: " + runtime)
    hooked = bool(os.environ.get(SYSROOT_ENV))
    unit = os.path.join(runtime, EXECUTORS_SLICE)
    if not os.path.exists(sysroot(unit)):
        try:
            with open(sysroot(unit), "w") as handle:
                handle.write("[Unit]\nDescription=Mesos Executors Slice\n")
        except (IOError, OSError) as error:
            raise Exit(prefix + "Failed to create systemd slice '%s': Failed to write "
                       "systemd slice `%s`: %s" % (EXECUTORS_SLICE, unit, error.strerror))
        log.info("Created systemd slice: `\"%s\"`" % unit)
        if not hooked:
            try:
                _shell("systemctl daemon-reload")
            except OSError as error:
                raise Exit(prefix + "Failed to create systemd slice `%s`: Failed to "
                           "reload systemd daemon: %s" % (unit, error))
    if not hooked:
        try:
            _shell("systemctl start " + EXECUTORS_SLICE)
        except OSError as error:
            raise Exit(prefix + "Failed to start '%s': Failed to start systemd slice "
                       "`%s`: %s" % (EXECUTORS_SLICE, EXECUTORS_SLICE, error))
        log.info("Started systemd slice `%s`" % EXECUTORS_SLICE)
    hierarchy = os.path.join(flags.get("cgroups_hierarchy"), "systemd")
    if not cgroups_mounted(hierarchy):
        raise Exit(prefix + "Failed to locate systemd cgroups hierarchy: "
                   "'%s' is not a valid hierarchy" % hierarchy)
    if not os.path.exists(sysroot(os.path.join(hierarchy, EXECUTORS_SLICE))):
        raise Exit(prefix + "Failed to locate systemd cgroups hierarchy: "
                   "'%s' is not a valid cgroup" % EXECUTORS_SLICE)


def check_docker(flags):
    """DockerContainerizer::create() -> Docker::create(validate=true), as in
    src/docker/docker.cpp: an absolute socket path, then `docker --version`
    must run and report 1.8.0 or newer; before that, Apache's build wants a
    mounted cgroup v1 hierarchy with the `cpu` subsystem.
    """
    docker = flags.get("docker")
    socket_path = flags.get("docker_socket")
    prefix = "Could not create DockerContainerizer: Failed to create docker: "
    if not os.path.isabs(socket_path):
        raise Exit(prefix + "Invalid Docker socket path: " + socket_path)
    # Apache Mesos wants the cgroup v1 `cpu` hierarchy here; AVENTER's build
    # skips the check on cgroup v2 hosts (m3scluster/clusterd
    # src/docker/docker.cpp), so its flavour never makes it.
    if flavour() != "aventer" and cgroups_hierarchy_with("cpu") is None:
        raise Exit(prefix + "Failed to find a mounted cgroups hierarchy for the 'cpu' "
                   "subsystem; you probably need to mount cgroups manually")
    # Mesos runs this through the shell, so a docker CLI that cannot be found
    # shows up as exit status 127.
    command = "%s -H unix://%s --version" % (docker, socket_path)
    status, out, _ = run_shell(command, 5, prefix + "Timed out getting docker version")
    if status != 0:
        raise Exit(prefix + "Failed to get docker version: Failed to execute '%s': "
                   "exited with status %d" % (command, status))
    # Docker::__version(): the last word before the first comma, at most three
    # dot-separated components ("Docker version 20.10.24+dfsg1, build ...").
    words = out.decode(errors="replace").split(",")[0].split(" ")
    text = ".".join(words[-1].strip().split(".")[:3])
    match = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?([-+].*)?$", text)
    if not match:
        raise Exit(prefix + "Failed to get docker version: Failed to parse docker "
                   "version: Invalid version '%s'" % text)
    found = tuple(int(part or 0) for part in match.groups()[:3])
    if found < DOCKER_MIN_VERSION:
        raise Exit(prefix + "Insufficient version '%s' of Docker. Please upgrade to "
                   ">=' %s'" % ("%d.%d.%d" % found, ".".join(map(str, DOCKER_MIN_VERSION))))


def run_shell(command, timeout, timed_out):
    """Runs COMMAND through /bin/sh, as Mesos runs the docker CLI (so a missing CLI
    is exit status 127). Returns (status, stdout, stderr); raises Exit(TIMED_OUT)
    after TIMEOUT seconds."""
    process = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise Exit(timed_out)
    return process.returncode, out, err


def recover_docker(flags, log):
    """DockerContainerizerProcess::recover() (src/slave/containerizer/docker.cpp) lists
    every Docker container with `docker -H unix://<socket> ps -a`; with no Docker
    daemon that fails, and Slave::__recover() (src/slave/slave.cpp) exits with
    "Failed to perform recovery: ...". So a docker,mesos agent only stays up
    where the Docker daemon runs.
    """
    log.info("Recovering Docker containers")
    command = "%s -H unix://%s ps -a" % (flags.get("docker"), flags.get("docker_socket"))
    status, _, err = run_shell(
        command, 60, "Failed to perform recovery: Failed to run '%s': timed out" % command)
    if status != 0:
        raise Exit("Failed to perform recovery: Failed to run '%s': exited with status %d; "
                   "stderr='%s'" % (command, status, err.decode(errors="replace").strip()))


def check_containerizers(flags):
    """Containerizer::create(): every listed containerizer must come up."""
    for kind in [item for item in flags.get("containerizers").split(",") if item]:
        try:
            if kind == "docker":
                check_docker(flags)
            elif kind != "mesos":
                raise Exit("Unknown or unsupported containerizer: %s" % kind)
        except Exit as error:
            raise Exit("Failed to create a containerizer: " + error.message)


def check_master_detector(flags):
    """MasterDetector::create(--master): a ZooKeeper URL, a file, or host:port."""
    master = flags.get("master")
    if master.startswith("zk://"):
        try:
            parse_zk_url(master)
        except Exit as error:
            raise Exit("Failed to create a master detector: " + error.message)
        return
    if not re.match(r"^(master@)?[^:/\s]+:\d+$", master.strip()):
        raise Exit("Failed to create a master detector: Failed to parse '%s'" % master)


def _parse_value(text):
    """Attribute/resource values: a scalar is a number, ranges and sets stay text."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_attributes(text):
    attributes = {}
    for item in [part for part in (text or "").split(";") if part.strip()]:
        if ":" not in item:
            raise Exit("Invalid attribute key:value pair '%s'" % item, level="F")
        key, value = item.split(":", 1)
        attributes[key.strip()] = _parse_value(value.strip())
    return attributes


def detect_resources(work_dir):
    """Roughly Containerizer::resources(): what the agent offers by default."""
    mem_mb = 1024.0
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) / 1024.0
                    mem_mb = total - (1024.0 if total >= 2048 else total / 2)
    except (IOError, OSError):
        pass
    disk_mb = 1024.0
    try:
        stat = os.statvfs(work_dir)
        total = stat.f_blocks * stat.f_frsize / 1024.0 / 1024.0
        disk_mb = total - (10240.0 if total >= 20480 else total / 2)
    except OSError:
        pass
    return {"cpus": float(os.cpu_count() or 1), "mem": float(round(mem_mb)),
            "disk": float(round(disk_mb)), "gpus": 0.0, "ports": "[31000-32000]"}


def parse_resources(text, detected):
    resources = dict(detected)
    if not text:
        return resources
    if text.strip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as error:
            raise Exit("Failed to determine agent resources: %s" % error)
        for item in items:
            if "scalar" in item:
                resources[item["name"]] = float(item["scalar"]["value"])
            else:
                resources[item["name"]] = json.dumps(item.get("ranges") or item.get("set"))
        return resources
    for item in [part for part in text.split(";") if part.strip()]:
        match = re.match(r"^\s*([A-Za-z_][\w.-]*)(\([^)]*\))?\s*:\s*(.+?)\s*$", item)
        if not match:
            raise Exit("Failed to determine agent resources: Bad value for "
                       "resource '%s'" % item)
        resources[match.group(1)] = _parse_value(match.group(3))
    return resources


# ---------------------------------------------------------------------------
# HTTP.
# ---------------------------------------------------------------------------

class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    # libprocess sets SO_REUSEADDR on its listening socket as well.
    allow_reuse_address = True


class Request(object):
    def __init__(self, method, path, body, headers=None, peer=None):
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers or {}
        self.peer = peer


def make_handler(routes):
    """routes: path -> function(Request) -> (status, type, body, headers)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "mesos-standin/" + VERSION

        def handle_request(self, method):
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            route = routes.get(path.rstrip("/") or "/")
            body = b""
            length = int(self.headers.get("Content-Length") or 0)
            if length > 0:
                body = self.rfile.read(length)
            if route is None:
                self.respond(404, "text/plain; charset=utf-8", b"")
                return
            status, content_type, payload, headers = route(
                Request(method, path, body, self.headers, self.client_address))
            self.respond(status, content_type, payload, headers)

        def do_GET(self):
            self.handle_request("GET")

        def do_POST(self):
            self.handle_request("POST")

        def respond(self, status, content_type, body, headers=None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            # Mesos does not log every GET either; keep the journal readable.
            pass

    return Handler


def json_response(document, status=200):
    return status, "application/json", json.dumps(document, sort_keys=True).encode(), None


def text_response(status, text=""):
    return status, "text/plain; charset=utf-8", text.encode(), None


def health_response(_request=None):
    return text_response(200)


def post_json(ip, port, path, document, timeout=3.0):
    """The stand-ins' own agent -> master calls. Returns (status, document)."""
    request = urllib.request.Request(
        "http://%s:%d%s" % (ip, port, path), data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read().decode() or "null")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read().decode() or "null")
        except ValueError:
            return error.code, None


# ---------------------------------------------------------------------------
# Authentication: credential files, CRAM-MD5 stand-in, HTTP basic realms.
# ---------------------------------------------------------------------------

# src/master/constants.hpp, src/slave/constants.hpp: the HTTP realms.
MASTER_READONLY_REALM = "mesos-master-readonly"
MASTER_READWRITE_REALM = "mesos-master-readwrite"
MASTER_SCHEDULER_REALM = "mesos-master-scheduler"
AGENT_READONLY_REALM = "mesos-agent-readonly"
AGENT_READWRITE_REALM = "mesos-agent-readwrite"


class CredentialError(Exception):
    """A credential(s) file could not be used; the message is credentials.hpp's."""


def path_value(text):
    """stout's Path(): a leading file:// is dropped (Path flags are never
    fetched, but the Path constructor strips the scheme), nothing else."""
    if text.startswith("file://"):
        return text[len("file://"):]
    return text


def _tokenize(text, delimiter):
    # stout strings::tokenize(): split, dropping empty tokens.
    return [token for token in text.split(delimiter) if token != ""]


def _read_file(path, what, log):
    """The common start of credentials::read() / readCredential(): None for an
    empty file, a warning when others may access it."""
    log.info("Loading %s for authentication from '%s'" % (what, path))
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError) as error:
        raise CredentialError("Failed to read %s file '%s': %s"
                              % (what, path, error.strerror))
    if not data:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        log.warning("Failed to stat %s file '%s': %s" % (what, path, error.strerror))
    else:
        if mode & 0o007:
            log.warning("Permissions on %s file '%s' are too open. It is "
                        "recommended that your %s file is NOT accessible by others."
                        % (what, path, what))
    return data.decode("utf-8", "replace")


def _credential_message(document):
    """protobuf::parse<Credential>(): principal required, secret optional."""
    if not isinstance(document, dict):
        return None
    principal = document.get("principal")
    secret = document.get("secret", "")
    if not isinstance(principal, str) or not isinstance(secret, str):
        return None
    return (principal, secret)


def read_credentials(path, log):
    """src/credentials/credentials.hpp credentials::read(): JSON
    {"credentials": [{"principal", "secret"}, ...]}, else the deprecated text
    form, one `principal secret` per line (split on single spaces only).
    Returns None for an empty file."""
    text = _read_file(path, "credentials", log)
    if text is None:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        entries = document.get("credentials", [])
        if isinstance(entries, list):
            parsed = [_credential_message(entry) for entry in entries]
            if all(entry is not None for entry in parsed):
                return parsed
    credentials = []
    for line in _tokenize(text, "\n"):
        pairs = _tokenize(line, " ")
        if len(pairs) != 2:
            raise CredentialError("Invalid credential format at line %d"
                                  % (len(credentials) + 1))
        credentials.append((pairs[0], pairs[1]))
    return credentials


def read_credential(path, log):
    """credentials::readCredential(): JSON {"principal", "secret"}, else one
    `principal secret` line. Returns None for an empty file."""
    text = _read_file(path, "credential", log)
    if text is None:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        credential = _credential_message(document)
        if credential is not None:
            return credential
    lines = _tokenize(text, "\n")
    if len(lines) != 1:
        raise CredentialError("Expecting only one credential")
    pairs = _tokenize(lines[0], " ")
    if len(pairs) != 2:
        raise CredentialError("Invalid credential format")
    return (pairs[0], pairs[1])


def load_credentials(flags, name, log):
    """The master's --credentials and the agent's --http_credentials:
    Master::initialize() / Slave::initialize()."""
    if flags.get(name) is None:
        return None
    try:
        credentials = read_credentials(path_value(flags.get(name)), log)
    except CredentialError as error:
        raise Exit("%s (see --%s flag)" % (error, name))
    if credentials is None:
        raise Exit("Credentials file must contain at least one credential "
                   "(see --%s flag)" % name)
    return credentials


def initialize_http_authenticators(realm, names, credentials, log):
    """src/common/http.cpp initializeHttpAuthenticators() for the default
    'basic' authenticator (the only one a default build has)."""
    for name in names.split(","):
        if name != "basic":
            # Close paraphrase: the real message comes from the module manager.
            raise Exit("HTTP authenticator '%s' not found. Check the spelling "
                       "(compare to 'basic') or verify that the authenticator "
                       "was loaded successfully (see --modules)" % name)
        if credentials is None:
            raise Exit("No credentials provided for the default 'basic' HTTP "
                       "authenticator for realm '%s'" % realm)
        log.info("Creating default 'basic' HTTP authenticator for realm '%s'" % realm)


class HttpAuthentication(object):
    """libprocess' route() realms with BasicAuthenticator
    (3rdparty/libprocess/src/authenticator.cpp): a realm that has an
    authenticator answers 401 without a valid `Authorization: Basic` header;
    a realm without one lets every request through."""

    def __init__(self):
        self.realms = {}  # realm -> {principal: secret}

    def enable(self, realm, credentials):
        table = {}
        for principal, secret in credentials:
            table[principal] = secret  # a hashmap: the last one wins
        self.realms[realm] = table

    def principal(self, realm, request):
        """None when the request is refused, "" when the realm is open."""
        table = self.realms.get(realm)
        if table is None:
            return ""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        components = header.split(" ")
        if len(components) != 2 or components[0] != "Basic":
            return None
        try:
            decoded = base64.b64decode(components[1].encode(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        # strings::split(decoded, ":") must give exactly two parts: a secret
        # with a ':' in it can never be used over HTTP.
        parts = decoded.split(":")
        if len(parts) != 2 or table.get(parts[0]) != parts[1]:
            return None
        return parts[0]

    def route(self, realm, handler):
        def authenticated(request):
            if self.principal(realm, request) is None:
                # process::http::Unauthorized: the challenge, no body.
                return 401, "text/plain; charset=utf-8", b"", {
                    "WWW-Authenticate": 'Basic realm="%s"' % realm}
            return handler(request)
        return authenticated


def cram_md5_authenticate(credentials, credential):
    """Stand-in for the CRAM-MD5 exchange (src/authentication/cram_md5/):
    True when the master's --credentials hold this principal with this
    secret. A master without --credentials refuses everyone
    ("No credentials provided, authentication requests will be refused")."""
    if credentials is None or not isinstance(credential, dict):
        return False
    principal = credential.get("principal")
    secret = credential.get("secret", "")
    table = {}
    for known_principal, known_secret in credentials:
        table[known_principal] = known_secret
    return principal in table and table[principal] == secret


# ---------------------------------------------------------------------------
# ZooKeeper: the group Mesos masters join and agents watch.
# ---------------------------------------------------------------------------

# src/master/constants.cpp MASTER_INFO_JSON_LABEL: masters join the group as
# ephemeral sequential znodes <path>/json.info_<seq> holding MasterInfo as JSON;
# the lowest sequence leads (src/master/detector/zookeeper.cpp).
JSON_LABEL = "json.info"


def parse_zk(url):
    """zookeeper::URL::parse(): zk://[user:password@]host:port[,...]/path.

    The path starts at the first '/', the credentials end at the last '@'
    before it; they are the whole `user:password` of a digest addAuth
    (include/mesos/zookeeper/url.hpp)."""
    servers, path = parse_zk_url(url)
    credentials = None
    if "@" in servers:
        credentials, servers = servers.rsplit("@", 1)
    return servers, path.rstrip("/") or "/", credentials


def _sequence(name):
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return None


# zerror() of the ZooKeeper C client (zookeeper.c), which Mesos's
# ZooKeeper::message() returns, for the errors Mesos does not retry
# (ZooKeeper::retryable() in src/zookeeper/zookeeper.cpp).
_ZERROR = [
    ("NoAuthError", "not authenticated"),
    ("NoNodeError", "no node"),
    ("NodeExistsError", "node exists"),
    ("InvalidACLError", "invalid acl"),
    ("AuthFailedError", "authentication failed"),
    ("BadArgumentsError", "bad arguments"),
    ("NotEmptyError", "not empty"),
    ("NoChildrenForEphemeralsError", "no children for ephemerals"),
    ("BadVersionError", "bad version"),
    ("InvalidCallbackError", "invalid callback"),
    ("UnimplementedError", "unimplemented"),
    ("MarshallingError", "marshalling error"),
    ("SystemZookeeperError", "system error"),
    ("RuntimeInconsistency", "run time inconsistency"),
    ("DataInconsistency", "data inconsistency"),
    ("APIError", "api error"),
]


def zk_error_message(error):
    """zerror() for a non-retryable kazoo error; None for one Mesos retries
    (connection loss, operation timeout, session expired or moved)."""
    from kazoo import exceptions
    for name, message in _ZERROR:
        if isinstance(error, getattr(exceptions, name)):
            return message
    return None


class GroupFailure(Exception):
    """A non-retryable ZooKeeper error: KIND is "detect" when the detector's
    watch or data read failed, "contend" when the contender's join did."""

    def __init__(self, kind, message, aborts):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.aborts = aborts  # GroupProcess::abort(): the whole group fails


class Group(object):
    """zookeeper::Group over kazoo (src/zookeeper/group.cpp): a session, an
    optional membership of our own, and a watch that reports the current
    leader (lowest json.info_).

    With credentials in the URL the session authenticates with digest
    `user:password` and every znode the group creates (the base path and
    its missing parents too) gets EVERYONE_READ_CREATOR_ALL (world:anyone
    read, the creator's digest id all); without, OPEN_ACL_UNSAFE
    (GroupProcess's constructor, src/zookeeper/authentication.cpp).
    Errors ZooKeeper::retryable() does not list (NoAuth among them) are
    final: ON_ERROR(kind, message) is called and must end the process, as
    Master::detected()/contended() and Slave::detected() do."""

    def __init__(self, url, session_timeout, log, on_leader, on_error, data=None):
        try:
            from kazoo.client import KazooClient
            from kazoo.protocol.states import KazooState
            from kazoo.security import (ACL, ANYONE_ID_UNSAFE, AUTH_IDS,
                                        OPEN_ACL_UNSAFE, Permissions)
        except ImportError:
            raise Exit("The TEST STAND-IN needs python3-kazoo to talk to ZooKeeper")
        self.KazooState = KazooState
        servers, self.path, credentials = parse_zk(url)
        self.authenticated = credentials is not None
        if self.authenticated:
            # zookeeper::EVERYONE_READ_CREATOR_ALL
            self.acl = [ACL(Permissions.READ, ANYONE_ID_UNSAFE),
                        ACL(Permissions.ALL, AUTH_IDS)]
        else:
            self.acl = OPEN_ACL_UNSAFE
        self.log = log
        self.on_leader = on_leader
        self.on_error = on_error
        self.data = data
        self.member = None  # our znode name
        self.lock = threading.Lock()
        self.events = []
        self.wakeup = threading.Condition(self.lock)
        # GroupProcess::authenticate(): zoo_add_auth(zh, "digest", credentials).
        auth = [("digest", credentials)] if credentials else None
        self.client = KazooClient(
            hosts=servers, timeout=max(session_timeout, 1.0), auth_data=auth,
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 1.0})
        self.client.add_listener(self._state)
        thread = threading.Thread(target=self._run)
        thread.daemon = True
        thread.start()

    def _state(self, state):
        # Runs on kazoo's thread: only queue it.
        self._push(("state", state))

    def _push(self, event):
        with self.lock:
            self.events.append(event)
            self.wakeup.notify()

    def _watch(self, _event):
        self._push(("children", None))

    def _run(self):
        self.client.start_async()
        ready = False  # the base path exists for this session
        dirty = True  # the memberships must be read again
        while True:
            with self.lock:
                if not self.events:
                    self.wakeup.wait(0.5)
                events, self.events = self.events, []
            for kind, value in events:
                if kind == "state" and value == self.KazooState.LOST:
                    # The session expired: its ephemeral znodes are gone, and
                    # the next one authenticates and creates the path again.
                    ready = False
                    if self.member:
                        self.log.info("ZooKeeper session expired")
                        self.member = None
                        self.on_leader(None, lost=True)
                if kind in ("children", "retry"):
                    dirty = True
            if not self.client.connected:
                continue
            try:
                if not ready:
                    if self.authenticated:
                        self.log.info("Authenticating with ZooKeeper using digest")
                    self._create_path()
                    ready = True
                    dirty = True
                if self.data is not None and self.member is None:
                    # The master's detector and contender are separate groups
                    # (separate sessions): the detector's watch is set up as
                    # the process starts, so it fails first when both would.
                    self._memberships()
                    self._join()
                    dirty = True
                if dirty:
                    dirty = False
                    self._detect(self._memberships())
            except GroupFailure as failure:
                if failure.aborts:
                    # GroupProcess::abort(), then the detector's log lines.
                    self.log.error("Group aborting: " + failure.message)
                    self.log.error("Failed to watch memberships: " + failure.message)
                    self.log.error("Failed to detect the leader: " + failure.message)
                self.on_error(failure.kind, failure.message)
                return
            except Exception as error:  # retryable: connection loss, timeouts
                self.log.warning("ZooKeeper operation failed: %r" % (error,))
                time.sleep(0.5)
                self._push(("retry", None))

    def _call(self, kind, aborts, message, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            text = zk_error_message(error)
            if text is None:
                raise
            raise GroupFailure(kind, "%s: %s" % (message, text), aborts)

    def _create_path(self):
        """GroupProcess::create(): ZooKeeper::create(znode, "", acl, 0,
        recursive): exists() first (which needs no permission), then the
        missing parents and the znode with the group's ACL; "node exists"
        is success. NoAuth on an existing path is not noticed here."""
        self.log.info("Trying to create path '%s' in ZooKeeper" % self.path)
        if self.path == "/":
            return
        self._call("detect", True,
                   "Failed to create '%s' in ZooKeeper" % self.path,
                   self._create_recursive, self.path)

    def _create_recursive(self, path):
        from kazoo.exceptions import NodeExistsError
        if self.client.exists(path) is not None:
            return
        parent = path[:path.rfind("/")]
        if parent:
            self._create_recursive(parent)
        try:
            self.client.create(path, b"", acl=self.acl)
        except NodeExistsError:
            pass

    def _memberships(self):
        """GroupProcess::cache(): the children, with the watch set."""
        return self._call(
            "detect", True,
            "Non-retryable error attempting to get children of '%s' in ZooKeeper"
            % self.path,
            self.client.get_children, self.path, watch=self._watch)

    def _join(self):
        """GroupProcess::doJoin(): an ephemeral sequential json.info_ znode."""
        path = self.path.rstrip("/") + "/" + JSON_LABEL + "_"
        created = self._call(
            "contend", False,
            "Failed to create ephemeral node at '%s' in ZooKeeper" % path,
            self.client.create, path, self.data(), acl=self.acl,
            ephemeral=True, sequence=True)
        self.member = created.rsplit("/", 1)[1]
        self.log.info("Created group membership %s in %s" % (self.member, self.path))

    def _detect(self, children):
        from kazoo.exceptions import NoNodeError
        members = [(_sequence(child), child) for child in children
                   if child.startswith(JSON_LABEL + "_") and _sequence(child) is not None]
        if not members:
            self.on_leader(None)
            return
        _, name = min(members)
        path = self.path.rstrip("/") + "/" + name
        try:
            data, _ = self.client.get(path)
        except NoNodeError:
            # GroupProcess::doData(): a membership gone before it could be
            # read is no error; the watch reports the change.
            self._push(("retry", None))
            return
        except Exception as error:
            text = zk_error_message(error)
            if text is None:
                raise
            # The detector's fetched(): the detection fails, not the group.
            raise GroupFailure(
                "detect", "Failed to get data for ephemeral node '%s' in ZooKeeper: %s"
                % (path, text), False)
        try:
            info = json.loads(data.decode())
        except ValueError as error:
            self.log.warning("Failed to parse data into valid JSON: %s" % error)
            return
        self.on_leader(info, member=name)


# ---------------------------------------------------------------------------
# The two programs.
# ---------------------------------------------------------------------------

def master_group_error(log):
    """Master::detected() and Master::contended() (src/master/master.cpp):
    a failed detection or candidacy ends the master."""
    def on_error(kind, message):
        if kind == "contend":
            log.exit(Exit("Failed to contend: " + message))
        else:
            log.exit(Exit("Failed to detect the leading master: %s; committing suicide!"
                          % message))
        os._exit(1)
    return on_error


def agent_group_error(log):
    """Slave::detected() (src/slave/slave.cpp): a failed detection ends the agent."""
    def on_error(_kind, message):
        log.exit(Exit("Failed to detect a master: " + message))
        os._exit(1)
    return on_error


def usage(program, definitions):
    lines = ["Usage: %s [options]" % program, ""]
    for flag in sorted(definitions, key=lambda f: f.name):
        names = [flag.name] + ([flag.alias] if flag.alias else [])
        if flag.boolean:
            lines.append("  " + ", ".join("--[no-]" + name for name in names))
        else:
            lines.append("  " + ", ".join("--%s=VALUE" % name for name in names))
    return "\n".join(lines)


def load_or_print(program, definitions, argv, environ):
    """The start of both main()s: --help, --version, then load errors."""
    try:
        flags = load_flags(definitions, argv, environ)
    except FlagError as error:
        flags = None
        load_error = str(error)
    else:
        load_error = None
    if flags is not None and flags.true("help"):
        print(usage(program, definitions))
        return None, 0
    if flags is not None and flags.true("version"):
        print("mesos %s" % VERSION)
        return None, 0
    if load_error is not None:
        sys.stderr.write("%s\n\nSee `%s --help` for a list of supported flags.\n"
                         % (redact(load_error), program))
        return None, 1
    return flags, None


def version_response(_request=None):
    return json_response({"version": VERSION, "git_tag": VERSION,
                          "build_date": BUILD_DATE, "standin": True})


def _ip_number(ip):
    # MasterInfo.ip is the address as a uint32 in network order (MESOS-1201).
    return struct.unpack("=I", socket.inet_aton(ip))[0]


class Master(object):
    """What src/master/master.cpp keeps that the endpoints show."""

    def __init__(self, flags, log):
        self.flags = flags
        self.log = log
        self.lock = threading.RLock()
        self.info = None
        self.leader = None
        self.elected_time = None
        self.slaves = {}  # id -> /state entry
        self.next_slave = 0
        self.frameworks = {}  # id -> /state entry
        self.completed_frameworks = {}
        self.next_framework = 0
        self.credentials = None  # --credentials: [(principal, secret)]
        self.http = HttpAuthentication()
        self.start_time = time.time()

    def authenticate(self, kind, pid, credential):
        """Master::authenticate(): the stand-in CRAM-MD5 exchange. Returns the
        principal, or None when refused (the authenticatee then fails)."""
        if cram_md5_authenticate(self.credentials, credential):
            return credential["principal"]
        # Close paraphrase of Master::_authenticate()'s warning.
        self.log.warning("Failed to authenticate %s %s: Authentication failed" % (kind, pid))
        return None

    def initialize_authentication(self):
        """Master::initialize(): the authentication part, in its order."""
        flags, log = self.flags, self.log
        if flags.true("authenticate_frameworks"):
            log.info("Master only allowing authenticated frameworks to register")
        else:
            log.info("Master allowing unauthenticated frameworks to register")
        if flags.true("authenticate_agents"):
            log.info("Master only allowing authenticated agents to register")
        else:
            log.info("Master allowing unauthenticated agents to register")
        if flags.true("authenticate_http_frameworks"):
            log.info("Master only allowing authenticated HTTP frameworks to register")
        else:
            log.info("Master allowing HTTP frameworks to register without authentication")
        self.credentials = load_credentials(flags, "credentials", log)
        names = flags.get("authenticators").split(",")
        if names == [""]:
            raise Exit("No authenticator specified")
        if len(names) > 1:
            raise Exit("Multiple authenticators not supported")
        if names[0] != "crammd5":
            raise Exit("Authenticator '%s' not found. Check the spelling (compare "
                       "to 'crammd5') or verify that the authenticator was loaded "
                       "successfully (see --modules)" % names[0])
        log.info("Using default 'crammd5' authenticator")
        if self.credentials is None:
            # src/authentication/cram_md5/authenticator.cpp: only a warning;
            # every authentication attempt is then refused.
            log.warning("No credentials provided, authentication requests will be refused")
        log.info("Initializing server SASL")
        for flag, realm in (("authenticate_http_readonly", MASTER_READONLY_REALM),
                            ("authenticate_http_readwrite", MASTER_READWRITE_REALM)):
            if flags.true(flag):
                initialize_http_authenticators(
                    realm, flags.get("http_authenticators"), self.credentials, log)
                self.http.enable(realm, self.credentials)
        if flags.true("authenticate_http_frameworks"):
            if flags.get("http_framework_authenticators") is None:
                raise Exit("Missing `--http_framework_authenticators` flag. This must "
                           "be used in conjunction with `--authenticate_http_frameworks`")
            initialize_http_authenticators(
                MASTER_SCHEDULER_REALM, flags.get("http_framework_authenticators"),
                self.credentials, log)

    def elected(self):
        return self.leader is not None and self.leader["id"] == self.info["id"]

    def detected(self, leader, member=None, lost=False):
        """Master::detected() / lostCandidacy(): called on every change."""
        with self.lock:
            was_elected = self.elected()
            if lost and was_elected:
                self.log.exit(Exit("Lost leadership... committing suicide!"))
                os._exit(1)
            if lost:
                return
            previous, self.leader = self.leader, leader
            if leader is None:
                self.log.warning("The leading master is unknown: no master is currently leading")
            elif self.elected():
                if not was_elected:
                    self.elected_time = time.time()
                    self.log.info("Elected as the leading master!")
            else:
                if was_elected:
                    self.log.exit(Exit("Lost leadership... committing suicide!"))
                    os._exit(1)
                if previous is None or previous.get("id") != leader.get("id"):
                    self.log.info("The newly elected leader is %s with id %s"
                                  % (leader.get("pid"), leader.get("id")))

    # -- endpoints ---------------------------------------------------------

    def redirect(self, request):
        """Master::Http::redirect(): 503 without a leader, else 307 to it."""
        with self.lock:
            leader = self.leader
        if leader is None:
            return text_response(503, "No leader elected")
        base = "//%s:%d" % (leader.get("hostname") or leader["address"]["ip"],
                            leader["port"])
        if request.path in ("/redirect", "/master/redirect"):
            return 307, "text/plain; charset=utf-8", b"", {"Location": base}
        return 307, "text/plain; charset=utf-8", b"", {"Location": base + request.path}

    def leader_only(self, handler):
        def route(request):
            if not self.elected():
                return self.redirect(request)
            return handler(request)
        return route

    def state(self, _request):
        with self.lock:
            slaves = [dict(entry) for _, entry in sorted(self.slaves.items())]
            document = dict(self.document)
            document.update(
                frameworks=[dict(entry) for _, entry in sorted(self.frameworks.items())],
                completed_frameworks=[dict(entry) for _, entry
                                      in sorted(self.completed_frameworks.items())],
                leader=self.leader["pid"], leader_info=self.leader,
                elected_time=self.elected_time, slaves=slaves,
                activated_slaves=sum(1 for entry in slaves if entry["active"]),
                deactivated_slaves=sum(1 for entry in slaves if not entry["active"]))
        return json_response(document)

    def slaves_endpoint(self, _request):
        with self.lock:
            return json_response({"slaves": [dict(entry) for _, entry
                                             in sorted(self.slaves.items())],
                                  "recovered_slaves": []})

    def register(self, request):
        """Stand-in only: how stand-in agents (re-)register (real agents send
        RegisterSlaveMessage / ReregisterSlaveMessage over libprocess)."""
        if request.method != "POST":
            return text_response(405)
        if not self.elected():
            return text_response(503, "Not the leading master")
        try:
            agent = json.loads(request.body.decode())
        except ValueError:
            return text_response(400, "Bad JSON")
        # Real agents with a --credential authenticate first (CRAM-MD5 over
        # libprocess); stand-in agents send the credential along. A refused
        # authentication makes the agent exit.
        if agent.get("credential") is not None:
            if self.authenticate("agent", agent.get("pid"), agent["credential"]) is None:
                return json_response({"error": "Authentication refused"}, 401)
        elif self.flags.true("authenticate_agents"):
            # Master::registerSlave() / reregisterSlave(): dropped, no answer;
            # the agent keeps retrying.
            self.log.warning("Refusing %s of agent at %s because it is not authenticated"
                             % ("re-registration" if agent.get("id") else "registration",
                                agent.get("pid")))
            return json_response({"error": "not authenticated"}, 403)
        with self.lock:
            now = time.time()
            slave_id = agent.get("id") or ""
            if slave_id and slave_id in self.slaves:
                entry = self.slaves[slave_id]
                entry["reregistered_time"] = now
                self.log.info("Re-registered agent %s at %s (%s)"
                              % (slave_id, agent["pid"], agent["hostname"]))
            else:
                if not slave_id:
                    slave_id = "%s-S%d" % (self.info["id"], self.next_slave)
                    self.next_slave += 1
                    self.log.info("Registered agent %s at %s (%s)"
                                  % (slave_id, agent["pid"], agent["hostname"]))
                else:
                    self.log.info("Re-registered agent %s at %s (%s)"
                                  % (slave_id, agent["pid"], agent["hostname"]))
                entry = {"id": slave_id, "registered_time": now}
                if agent.get("id"):
                    entry["reregistered_time"] = now
                self.slaves[slave_id] = entry
            resources = agent.get("resources") or {}
            entry.update(
                pid=agent["pid"], hostname=agent["hostname"], port=agent["port"],
                active=True, deactivated=False, version=agent.get("version", VERSION),
                resources=resources, unreserved_resources=resources,
                used_resources=dict((name, 0.0) for name in ("cpus", "mem", "disk", "gpus")),
                offered_resources=dict((name, 0.0) for name in ("cpus", "mem", "disk", "gpus")),
                reserved_resources={}, attributes=agent.get("attributes") or {})
            return json_response({"id": slave_id, "master_info": self.info})

    def subscribe(self, request):
        """Stand-in only: how the Marathon stand-in registers as a framework
        (real schedulers authenticate with CRAM-MD5 and send
        RegisterFrameworkMessage / a SUBSCRIBE call over libprocess)."""
        if request.method != "POST":
            return text_response(405)
        if not self.elected():
            return text_response(503, "Not the leading master")
        try:
            call = json.loads(request.body.decode())
            info = call["framework_info"]
            pid = call["pid"]
        except (ValueError, KeyError, TypeError):
            return text_response(400, "Bad JSON")
        name = info.get("name", "")
        principal = None
        if call.get("credential") is not None:
            principal = self.authenticate("framework", pid, call["credential"])
            if principal is None:
                return json_response({"error": "Authentication refused"}, 401)
        # Master::validateFrameworkAuthentication(), then Master::subscribe().
        error = None
        framework_id = info.get("id") or ""
        if framework_id and framework_id in self.completed_frameworks:
            error = "Framework has been removed"
        elif self.flags.true("authenticate_frameworks") and principal is None:
            error = "Framework at %s is not authenticated" % pid
        elif principal is not None and info.get("principal") not in (None, principal):
            error = ("Framework principal '%s' does not match authenticated "
                     "principal '%s'" % (info["principal"], principal))
        if error is not None:
            self.log.info("Refusing subscription of framework '%s' at %s: %s"
                          % (name, pid, error))
            # FrameworkErrorMessage: the driver calls Scheduler::error().
            return json_response({"error": error}, 403)
        with self.lock:
            now = time.time()
            if not framework_id:
                # Master::newFrameworkId(): <master id>-<4 digits>.
                framework_id = "%s-%04d" % (self.info["id"], self.next_framework)
                self.next_framework += 1
                self.log.info("Registered framework %s (%s) at %s"
                              % (framework_id, name, pid))
                entry = {"id": framework_id, "registered_time": now}
            else:
                entry = self.frameworks.get(framework_id) or {
                    "id": framework_id, "registered_time": now}
                entry["reregistered_time"] = now
                self.log.info("Re-registered framework %s (%s) at %s"
                              % (framework_id, name, pid))
            entry.update(
                name=name, pid=pid, user=info.get("user", ""),
                principal=info.get("principal"), hostname=info.get("hostname", ""),
                webui_url=info.get("webui_url", ""), role=info.get("role", "*"),
                roles=[info.get("role", "*")],
                failover_timeout=info.get("failover_timeout", 0),
                checkpoint=bool(info.get("checkpoint", False)),
                capabilities=info.get("capabilities", []),
                active=True, connected=True, recovered=False,
                tasks=[], completed_tasks=[], offers=[], executors=[],
                resources={}, used_resources={}, offered_resources={})
            if entry.get("principal") is None:
                del entry["principal"]
            self.frameworks[framework_id] = entry
            return json_response({"framework_id": framework_id, "master_info": self.info})

    def framework_ping(self, request):
        """Stand-in only: a framework checks that this master still knows it."""
        try:
            framework = json.loads(request.body.decode())
        except ValueError:
            return text_response(400, "Bad JSON")
        with self.lock:
            if self.elected() and framework.get("id") in self.frameworks:
                return json_response({"master_id": self.info["id"]})
            if framework.get("id") in self.completed_frameworks:
                return json_response({"error": "Framework has been removed"}, 410)
        return text_response(404)

    def frameworks_endpoint(self, _request):
        with self.lock:
            return json_response({
                "frameworks": [dict(entry) for _, entry in sorted(self.frameworks.items())],
                "completed_frameworks": [dict(entry) for _, entry
                                         in sorted(self.completed_frameworks.items())],
                "unregistered_frameworks": []})

    def teardown(self, request):
        """Master::Http::teardown() (src/master/http.cpp): POST with
        frameworkId=<id> in a query-string body."""
        if not self.elected():
            return self.redirect(request)
        if request.method != "POST":
            return 405, "text/plain; charset=utf-8", (
                "Expecting one of { 'POST' }, but received '%s'" % request.method).encode(), {
                    "Allow": "POST"}
        try:
            values = urllib.parse.parse_qs(request.body.decode(), keep_blank_values=True)
        except (ValueError, UnicodeDecodeError) as error:
            return text_response(400, "Unable to decode query string: %s" % error)
        if "frameworkId" not in values:
            return text_response(400, "Missing 'frameworkId' query parameter in the "
                                      "request body")
        framework_id = values["frameworkId"][-1]
        with self.lock:
            entry = self.frameworks.pop(framework_id, None)
            if entry is None:
                return text_response(400, "No framework found with specified ID")
            entry.update(active=False, connected=False, unregistered_time=time.time())
            self.completed_frameworks[framework_id] = entry
            self.log.info("Removed framework %s" % framework_id)
        return text_response(200)

    def ping(self, request):
        """Stand-in only: an agent checks that this master still knows it."""
        try:
            agent = json.loads(request.body.decode())
        except ValueError:
            return text_response(400, "Bad JSON")
        with self.lock:
            if self.elected() and agent.get("id") in self.slaves:
                return json_response({"master_id": self.info["id"]})
        return text_response(404)


def run_master(program, argv, environ):
    flags, status = load_or_print(program, MASTER_FLAGS, argv, environ)
    if flags is None:
        return status

    log = Log(program)
    master = Master(flags, log)

    def flags_json(_request):
        return json_response({"flags": flags.as_json()})

    # The realm of each route as src/master/master.cpp installs it; libprocess
    # authenticates before the handler runs (so before any redirect).
    readonly = lambda handler: master.http.route(MASTER_READONLY_REALM, handler)
    readwrite = lambda handler: master.http.route(MASTER_READWRITE_REALM, handler)
    routes = {"/version": version_response}
    for prefix in ("", "/master"):
        routes[prefix + "/health"] = health_response
        routes[prefix + "/flags"] = readonly(flags_json)
        routes[prefix + "/redirect"] = master.redirect
        # Leader-only endpoints: a non-leading master answers 307 or 503.
        routes[prefix + "/state"] = readonly(master.leader_only(master.state))
        routes[prefix + "/state-summary"] = readonly(master.leader_only(master.state))
        routes[prefix + "/slaves"] = readonly(master.leader_only(master.slaves_endpoint))
        routes[prefix + "/frameworks"] = readonly(
            master.leader_only(master.frameworks_endpoint))
        routes[prefix + "/teardown"] = readwrite(master.teardown)
        # Stand-in transport, no realm: credentials travel in the body.
        routes[prefix + "/standin/register"] = master.register
        routes[prefix + "/standin/ping"] = master.ping
        routes[prefix + "/standin/subscribe"] = master.subscribe
        routes[prefix + "/standin/framework_ping"] = master.framework_ping

    try:
        log.initialize(flags)
        for warning in flags.warnings:
            log.warning(warning)
        ip = resolve_ip(flags)
        check_advertise(flags)
        if flags.get("zk") is None and (
                (flags.get("master_contender") is None) != (flags.get("master_detector") is None)):
            raise Exit("Both --master_contender and --master_detector should be "
                       "specified or omitted.")
        if flags.get("zk") is not None and (
                flags.get("master_contender") is not None or flags.get("master_detector") is not None):
            raise Exit("Only one of --zk or the --master_contender/--master_detector "
                       "pair should be specified.")
        log.info("Build: %s by standin" % BUILD_DATE)
        log.info("Version: %s" % VERSION)
        bound = bind(ip, int(flags.get("port")), make_handler(routes))

        registry = flags.get("registry")
        if registry in ("replicated_log", "log_storage"):
            if flags.get("work_dir") is None:
                raise Exit("--work_dir needed for replicated log based registry")
            make_dir(flags.get("work_dir"), "work directory")
            if flags.get("zk") is not None:
                if flags.get("quorum") is None:
                    raise Exit("Need to specify --quorum for replicated log based "
                               "registry when using ZooKeeper")
        elif registry != "in_memory":
            raise Exit("'%s' is not a supported option for registry persistence" % registry)
        if flags.get("zk") is not None:
            try:
                parse_zk(flags.get("zk"))
            except Exit as error:
                raise Exit("Failed to create a master contender: " + error.message)

        ip, port = advertised(flags, bound)
        hostname = resolve_hostname(flags, ip)
    except Exit as error:
        log.exit(error)
        return 1

    master_id = str(uuid.uuid4())
    pid = "master@%s:%d" % (ip, port)
    # MasterInfo as src/master/master.cpp fills it and JSON::protobuf prints it.
    master.info = {
        "id": master_id, "ip": _ip_number(ip), "port": port, "pid": pid,
        "hostname": hostname, "version": VERSION,
        "address": {"hostname": hostname, "ip": ip, "port": port},
        "capabilities": [{"type": "AGENT_UPDATE"}, {"type": "AGENT_DRAINING"},
                         {"type": "QUOTA_V2"}],
    }
    document = {
        "standin": True,
        "version": VERSION, "git_tag": VERSION, "build_date": BUILD_DATE,
        "build_user": "standin", "start_time": master.start_time,
        "id": master_id, "pid": pid, "hostname": hostname,
        "unreachable_slaves": 0,
        "flags": flags.as_json(),
        "frameworks": [], "completed_frameworks": [],
        "orphan_tasks": [], "unregistered_frameworks": [],
    }
    for optional in ("cluster", "log_dir", "external_log_file"):
        if flags.get(optional) is not None:
            document[optional] = flags.get(optional)
    master.document = document

    log.info("Master %s (%s) started on %s:%d" % (master_id, hostname, ip, port))
    log.info("Flags at startup: " + flags.startup_line())
    try:
        master.initialize_authentication()
    except Exit as error:
        log.exit(error)
        return 1
    if flags.get("zk") is None:
        # The standalone contender elects this master at once.
        master.detected(master.info)
    else:
        timeout = parse_duration(flags.get("zk_session_timeout")) / 1e9
        try:
            Group(flags.get("zk").strip(), timeout, log, master.detected,
                  master_group_error(log), data=lambda: json.dumps(master.info).encode())
        except Exit as error:
            log.exit(error)
            return 1
    bound.server.serve_forever()
    return 0


class Agent(object):
    """The registration side of src/slave/slave.cpp, over the stand-ins' own
    HTTP calls: detect the leading master, (re-)register, keep checking."""

    def __init__(self, log, document, credential=None):
        self.log = log
        self.document = document
        self.credential = credential  # (principal, secret) from --credential
        self.lock = threading.Lock()
        self.leader = None  # MasterInfo of the detected leader
        self.registered_with = None  # MasterInfo id we registered with

    def detected(self, leader, member=None, lost=False):
        with self.lock:
            if lost:
                return
            if leader is None:
                if self.leader is not None:
                    self.log.info("Lost leading master")
            elif self.leader is None or leader.get("id") != self.leader.get("id"):
                self.log.info("New master detected at %s" % leader.get("pid"))
            self.leader = leader

    def registration(self):
        document = {
            "id": self.document["id"], "pid": self.document["pid"],
            "hostname": self.document["hostname"], "port": self.document["port"],
            "resources": self.document["resources"],
            "attributes": self.document["attributes"], "version": VERSION,
        }
        if self.credential is not None:
            # Stand-in transport: real agents run a CRAM-MD5 exchange
            # (--authenticatee=crammd5) and never send the secret itself.
            document["credential"] = {"principal": self.credential[0],
                                      "secret": self.credential[1]}
        return document

    def run(self, static):
        while True:
            with self.lock:
                leader = self.leader
            if static is not None:
                leader = static
            if leader is None:
                time.sleep(0.2)
                continue
            address = leader["address"]
            try:
                if self.registered_with is not None and (
                        static is not None or self.registered_with == leader.get("id")):
                    status, answer = post_json(address["ip"], address["port"],
                                               "/master/standin/ping",
                                               {"id": self.document["id"]})
                    if status == 200:
                        time.sleep(1.0)
                        continue
                    self.log.info("Master %s no longer knows this agent; "
                                  "re-registering" % leader.get("pid"))
                status, answer = post_json(address["ip"], address["port"],
                                           "/master/standin/register", self.registration())
            except (OSError, ValueError) as error:
                self.log.warning("Failed to reach master %s: %s" % (leader.get("pid"), error))
                time.sleep(0.5)
                continue
            if status == 401:
                # Slave::_authenticate(): a refused authentication is fatal.
                self.log.exit(Exit("Master %s refused authentication" % leader.get("pid")))
                os._exit(1)
            if status != 200 or not answer:
                # Refused registrations get no answer: retry, like
                # doReliableRegistration() does with its backoff.
                time.sleep(1.0 if status == 403 else 0.5)
                continue
            info = answer["master_info"]
            with self.lock:
                again = bool(self.document["id"])
                self.document["id"] = answer["id"]
                self.document["master_hostname"] = info["hostname"]
                self.registered_with = info["id"]
            if again:
                self.log.info("Re-registered with master %s" % info["pid"])
            else:
                self.log.info("Registered with master %s; given agent ID %s"
                              % (info["pid"], answer["id"]))


def agent_authentication(flags, log, http_auth):
    """Slave::initialize(): --credential, --http_credentials and the HTTP
    realms, in that order. Returns the credential or None."""
    credential = None
    if flags.get("credential") is not None:
        path = path_value(flags.get("credential"))
        try:
            credential = read_credential(path, log)
        except CredentialError as error:
            raise Exit("%s (see --credential flag)" % error)
        if credential is None:
            raise Exit("Empty credential file '%s' (see --credential flag)" % path)
        log.info("Agent using credential for: %s" % credential[0])
    http_credentials = load_credentials(flags, "http_credentials", log)
    names = flags.get("http_authenticators") or "basic"
    for flag, realm in (("authenticate_http_readonly", AGENT_READONLY_REALM),
                        ("authenticate_http_readwrite", AGENT_READWRITE_REALM)):
        if flags.true(flag):
            initialize_http_authenticators(realm, names, http_credentials, log)
            http_auth.enable(realm, http_credentials)
    return credential


def static_master(text):
    """A --master of the form host:port (or master@host:port)."""
    address = text.strip()
    if address.startswith("master@"):
        address = address[len("master@"):]
    host, port = address.rsplit(":", 1)
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        ip = host
    return {"id": None, "pid": "master@%s:%s" % (ip, port), "hostname": host,
            "address": {"ip": ip, "port": int(port), "hostname": host}}


def run_agent(program, argv, environ):
    flags, status = load_or_print(program, AGENT_FLAGS, argv, environ)
    if flags is None:
        return status

    log = Log(program)
    state = {}

    def serve(_request):
        with agent_lock:
            return json_response(dict(state["document"]))

    def flags_json(_request):
        return json_response({"flags": flags.as_json()})

    agent_lock = threading.Lock()
    http_auth = HttpAuthentication()
    routes = {"/version": version_response}
    # The agent's libprocess ID is still slave(1), and it is the delegate.
    # Realms as src/slave/slave.cpp installs them.
    for prefix in ("", "/slave(1)"):
        routes[prefix + "/health"] = health_response
        routes[prefix + "/state"] = http_auth.route(AGENT_READONLY_REALM, serve)
        routes[prefix + "/flags"] = http_auth.route(AGENT_READONLY_REALM, flags_json)

    try:
        log.initialize(flags)
        for warning in flags.warnings:
            log.warning(warning)
        if flags.get("master") is None and flags.get("master_detector") is None:
            raise Exit("Missing required option `--master` or `--master_detector`")
        if flags.get("master") is not None and flags.get("master_detector") is not None:
            raise Exit("Only one of `--master` or `--master_detector` should be specified")
        ip = resolve_ip(flags)
        if flags.get("ip6_discovery_command") is not None and flags.get("ip6") is not None:
            raise Exit("Only one of `--ip6` or `--ip6_discovery_command` should be specified")
        check_advertise(flags)
        log.info("Build: %s by standin" % BUILD_DATE)
        log.info("Version: %s" % VERSION)
        bound = bind(ip, int(flags.get("port")), make_handler(routes))
        if flags.true("systemd_enable_support") and systemd_exists(log):
            log.info("Initializing systemd state")
            systemd_initialize(flags, log)
        check_containerizers(flags)
        if flags.get("master") is not None:
            check_master_detector(flags)
        credential = agent_authentication(flags, log, http_auth)
        make_dir(flags.get("work_dir"), "agent work directory")
        attributes = parse_attributes(flags.get("attributes"))
        resources = parse_resources(flags.get("resources"),
                                    detect_resources(flags.get("work_dir")))
        ip, port = advertised(flags, bound)
        hostname = resolve_hostname(flags, ip)
        if "docker" in flags.get("containerizers").split(","):
            recover_docker(flags, log)
    except Exit as error:
        log.exit(error)
        return 1

    pid = "slave(1)@%s:%d" % (ip, port)
    document = {
        "standin": True,
        "version": VERSION, "git_tag": VERSION, "build_date": BUILD_DATE,
        "build_user": "standin", "start_time": time.time(),
        # Empty until a master registers the agent.
        "id": "", "pid": pid, "hostname": hostname, "port": port,
        "resources": resources, "attributes": attributes,
        "flags": flags.as_json(),
        "frameworks": [], "completed_frameworks": [],
    }
    for optional in ("log_dir", "external_log_file"):
        if flags.get(optional) is not None:
            document[optional] = flags.get(optional)
    state.update(document=document)

    log.info("Agent started on 1)@%s:%d" % (ip, port))
    log.info("Flags at startup: " + flags.startup_line())
    log.info("Agent resources: " + ";".join(
        "%s:%s" % (key, resources[key]) for key in sorted(resources)))

    agent = Agent(log, document, credential)
    agent.lock = agent_lock
    master = (flags.get("master") or "").strip()
    static = None
    if master.startswith("zk://"):
        timeout = parse_duration(flags.get("zk_session_timeout")) / 1e9
        try:
            Group(master, timeout, log, agent.detected, agent_group_error(log))
        except Exit as error:
            log.exit(error)
            return 1
    elif master:
        static = static_master(master)
    if master:
        thread = threading.Thread(target=agent.run, args=(static,))
        thread.daemon = True
        thread.start()
    bound.server.serve_forever()
    return 0


PROGRAMS = {
    "mesos-master": run_master,
    "mesos-agent": run_agent,
    # Mesos 1.x installs sbin/mesos-slave as a symlink to mesos-agent.
    "mesos-slave": run_agent,
}


def main(argv):
    if len(argv) < 2 or argv[1] not in PROGRAMS:
        sys.stderr.write("usage: %s {%s} [flags...]\n"
                         % (argv[0], "|".join(sorted(PROGRAMS))))
        return 2
    program = argv[1]
    record_argv(program, argv[2:])
    try:
        return PROGRAMS[program](program, argv[2:], os.environ)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv))
