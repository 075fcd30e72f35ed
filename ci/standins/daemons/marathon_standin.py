#!/usr/bin/env python3
"""TEST STAND-IN for Marathon 1.10, built for mesobake's test suite.

This is NOT Marathon. It stands in for /usr/share/marathon/bin/marathon in the
marathon stand-in package, because no real Marathon package can be downloaded
where the tests run. It schedules nothing. It copies what an image baker can
get wrong:

* configuration like Marathon >= 1.5: every MARATHON_<NAME> environment
  variable (systemd's EnvironmentFile=/etc/default/marathon) becomes
  `--<name> <value>`, or a bare `--<name>` when the value is empty;
  MARATHON_APP_* variables are ignored (mesosphere.marathon.Main.envToArgs);
  those arguments come before the command line's;
* option parsing strict like scallop: an unknown option, an option given twice
  (for instance once as MARATHON_MASTER and once as --master), an argument left
  over, a bad number or a missing --master stop the process with
  `[scallop] Error: ...` and exit status 1;
* the HTTP endpoints a deployment check uses: /ping, /v2/info, /v2/leader,
  behind HTTP basic authentication with --http_credentials (HttpModule);
* its own ZooKeeper use under --zk: digest authentication from
  zk://user:pass@..., the storage root <path>/state and the Curator leader
  latch <path>/leader-curator with Marathon's ACLs (CREATOR_ALL_ACL, the
  latch's parent world-readable too), exit 100 without a connection, no
  leadership when ZooKeeper refuses the latch;
* registration as a framework with the leading Mesos master, once elected,
  found in ZooKeeper like the scheduler driver does (with its digest
  credentials and ACLs; NoAuth ends the process), over the Mesos stand-in's
  own /master/standin/subscribe call, with --mesos_authentication's
  credential; a refused registration crashes Marathon like
  MarathonScheduler.error();
* no ZooKeeper password in its logs (real Marathon logs its command line
  whole); /v2/info shows the URLs redacted like Marathon does.

Like the Mesos stand-in, it keeps to Python 3.4 syntax so that it runs in every
guest image mesobake targets.
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
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

VERSION = "1.10.17"

# Option kinds: "string" and "int" take exactly one argument; "flag" takes
# none; "toggle" is scallop's toggle(), spelt --NAME or --disable_NAME.
# Columns: name, kind, default, section of /v2/info it is reported in.
OPTIONS = [
    ("master", "string", None, "marathon_config"),
    ("hostname", "string", socket.gethostname(), "marathon_config"),
    ("mesos_user", "string", getpass.getuser(), "marathon_config"),
    ("mesos_role", "string", None, "marathon_config"),
    ("framework_name", "string", "marathon", "marathon_config"),
    ("webui_url", "string", None, "marathon_config"),
    ("mesos_leader_ui_url", "string", None, "marathon_config"),
    ("task_launch_timeout", "int", 300000, "marathon_config"),
    ("task_launch_confirm_timeout", "int", 300000, "marathon_config"),
    ("task_reservation_timeout", "int", 20000, "marathon_config"),
    ("failover_timeout", "int", 604800, "marathon_config"),
    ("checkpoint", "toggle", True, "marathon_config"),
    ("ha", "toggle", True, "marathon_config"),
    ("executor", "string", "//cmd", "marathon_config"),
    ("local_port_min", "int", 10000, "marathon_config"),
    ("local_port_max", "int", 20000, "marathon_config"),
    ("access_control_allow_origin", "string", None, "marathon_config"),
    ("env_vars_prefix", "string", None, "marathon_config"),
    ("enable_features", "string", None, "marathon_config"),
    ("deprecated_features", "string", None, "marathon_config"),
    ("default_accepted_resource_roles", "string", None, "marathon_config"),
    ("default_network_name", "string", None, "marathon_config"),
    ("mesos_bridge_name", "string", "mesos-bridge", "marathon_config"),
    ("max_instances_per_offer", "int", 5, "marathon_config"),
    ("min_revive_offers_interval", "int", 5000, "marathon_config"),
    ("revive_offers_repetitions", "int", 3, "marathon_config"),
    ("decline_offer_duration", "int", 120000, "marathon_config"),
    ("offer_matching_timeout", "int", 3000, "marathon_config"),
    ("launch_tokens", "int", 100, "marathon_config"),
    ("launch_token_refresh_interval", "int", 30000, "marathon_config"),
    ("reconciliation_initial_delay", "int", 15000, "marathon_config"),
    ("reconciliation_interval", "int", 600000, "marathon_config"),
    ("scale_apps_initial_delay", "int", 15000, "marathon_config"),
    ("scale_apps_interval", "int", 300000, "marathon_config"),
    ("leader_proxy_connection_timeout", "int", 5000, "marathon_config"),
    ("leader_proxy_read_timeout", "int", 10000, "marathon_config"),
    ("on_elected_prepare_timeout", "int", 180000, "marathon_config"),
    ("mesos_heartbeat_interval", "int", 15000, "marathon_config"),
    ("mesos_heartbeat_failure_threshold", "int", 5, "marathon_config"),
    ("mesos_authentication", "toggle", False, "marathon_config"),
    ("mesos_authentication_principal", "string", None, "marathon_config"),
    ("mesos_authentication_secret_file", "string", None, "marathon_config"),
    ("mesos_authentication_secret", "string", None, "marathon_config"),
    ("task_lost_expunge_initial_delay", "int", 300000, "marathon_config"),
    ("task_lost_expunge_interval", "int", 30000, "marathon_config"),
    ("kill_chunk_size", "int", 100, "marathon_config"),
    ("kill_retry_timeout", "int", 10000, "marathon_config"),
    ("max_running_deployments", "int", 100, "marathon_config"),
    ("draining_seconds", "int", 0, "marathon_config"),
    ("gpu_scheduling_behavior", "string", "undefined", "marathon_config"),
    ("backup_location", "string", None, None),
    ("plugin_dir", "string", None, None),
    ("plugin_conf", "string", None, None),
    ("logging_level", "string", None, None),
    ("logstash", "string", None, None),
    ("metrics_name_prefix", "string", "marathon", None),
    ("metrics_prometheus", "toggle", True, None),
    ("metrics_statsd", "toggle", False, None),
    ("metrics_statsd_host", "string", None, None),
    ("metrics_statsd_port", "int", None, None),
    ("zk", "string", "zk://localhost:2181/marathon", "zookeeper_config"),
    ("zk_timeout", "int", 10000, "zookeeper_config"),
    ("zk_session_timeout", "int", 10000, "zookeeper_config"),
    ("zk_connection_timeout", "int", 10000, "zookeeper_config"),
    ("zk_max_versions", "int", 50, "zookeeper_config"),
    ("zk_max_node_size", "int", 1024000, "zookeeper_config"),
    ("zk_compression", "toggle", True, "zookeeper_config"),
    ("zk_compression_threshold", "int", 65536, "zookeeper_config"),
    ("http_port", "int", 8080, "http_config"),
    ("https_port", "int", 8443, "http_config"),
    ("http_address", "string", None, None),
    ("https_address", "string", None, None),
    ("disable_http", "flag", False, None),
    ("http_compression", "toggle", True, None),
    ("http_credentials", "string", None, None),
    ("http_realm", "string", "Mesosphere", None),
    ("http_max_concurrent_requests", "int", None, None),
    ("assets_path", "string", None, "http_config"),
    ("ssl_keystore_path", "string", None, None),
    ("ssl_keystore_password", "string", None, None),
    ("event_stream_max_outstanding_messages", "int", 50, None),
]

REQUIRED = ("master",)

# ZookeeperConf.ZkUrlPattern: zk://[user:pass@]host[:port][,...]/path, with
# user [^/:]+, pass [^@]+, hosts [A-z0-9-.]+(:port), nodes [^/]+ (so no
# trailing '/'). Groups: user, pass, hosts, path.
_HOST_AND_PORT = r"[A-z0-9\-.]+(?::\d+)?"
ZK_URL = re.compile(
    r"^zk://(?:([^/:]+):([^@]+)@)?(%s(?:,%s)*)(/[^/]+(?:/[^/]+)*)$"
    % (_HOST_AND_PORT, _HOST_AND_PORT))

# The credentials of a ZooKeeper URL, up to the last '@' before the path.
_ZK_CREDENTIALS = re.compile(r"zk://[^/]*@")


def redact(text):
    """Masks ZooKeeper credentials in text that is logged, the way
    ZkUrl.redactedConnectionString writes them.

    Real Marathon logs its whole command line ("Starting Marathon ... with
    --zk zk://user:pass@..."), so its journal carries the ZooKeeper password;
    the stand-in never logs one."""
    return _ZK_CREDENTIALS.sub("zk://xxxxxxxx:xxxxxxxx@", text)


def redacted_url(url):
    """ZkUrl.redactedConnectionString: zk://xxxxxxxx:xxxxxxxx@hosts/path when
    the URL has credentials. Text that is no ZkUrl is returned as it is."""
    match = ZK_URL.match(url)
    if match is None:
        return url
    user, _, hosts, path = match.groups()
    return "zk://%s%s%s" % ("xxxxxxxx:xxxxxxxx@" if user is not None else "", hosts, path)


class ScallopError(Exception):
    pass


def env_to_args(environ):
    """mesosphere.marathon.Main.envToArgs()."""
    args = []
    for key in sorted(environ):
        value = environ[key]
        if key.startswith("MARATHON_APP_"):
            # Marathon passes these to the apps it launches; a Marathon started
            # by Marathon must not take them for options.
            continue
        if key.startswith("MARATHON_"):
            args.append("--" + key[len("MARATHON_"):].lower())
            if value != "":
                args.append(value)
    return args


def option_table():
    """Maps every spelling (--ha, --disable_ha, ...) to (option, value for toggles)."""
    spellings = {}
    for name, kind, _, _ in OPTIONS:
        spellings[name] = (name, True)
        if kind == "toggle":
            spellings["disable_" + name] = (name, False)
    return spellings


def parse(args):
    """Scallop's parse: groups `--name [args...]`, then checks, in its order."""
    spellings = option_table()
    kinds = dict((name, kind) for name, kind, _, _ in OPTIONS)
    groups = []  # (spelling, [args]) in the order given
    leading = []  # words before the first option
    for word in args:
        if word == "--":
            break
        if word.startswith("--") and len(word) > 2:
            spelling, eq, value = word[2:].partition("=")
            groups.append((spelling, [value] if eq else []))
        elif word.startswith("-") and len(word) > 1 and not re.match(r"^-\d", word):
            # Marathon defines no short options.
            raise ScallopError("Unknown option '%s'" % word[1:2])
        elif groups:
            groups[-1][1].append(word)
        else:
            leading.append(word)

    for spelling, _ in groups:
        if spelling not in spellings:
            raise ScallopError("Unknown option '%s'" % spelling)

    # Flags and toggles take no argument: what follows them is left over, and
    # Marathon has no trailing arguments to take it.
    excess = list(leading)
    by_option = {}
    for spelling, words in groups:
        name, positive = spellings[spelling]
        if kinds[name] in ("flag", "toggle"):
            excess.extend(words)
            words = []
        by_option.setdefault(name, []).append((spelling, positive, words))
    if excess:
        raise ScallopError("Excess arguments provided: '%s'" % " ".join(excess))

    values = {}
    for name, kind, default, _ in OPTIONS:
        given = by_option.get(name)
        if not given:
            if name in REQUIRED:
                raise ScallopError("Required option '%s' not found" % name)
            values[name] = default
            continue
        words = [word for _, _, group in given for word in group]
        if kind in ("flag", "toggle"):
            if len(given) > 1:
                raise ScallopError("Bad arguments for option '%s': '' - too many "
                                   "arguments for flag option" % name)
            values[name] = given[0][1]
            continue
        if len(given) != 1 or len(words) != 1:
            # Covers an option given twice: once from MARATHON_<NAME> and
            # once on the command line, which the Marathon docs forbid.
            raise ScallopError("Bad arguments for option '%s': '%s' - you should "
                               "provide exactly one argument for this option"
                               % (name, " ".join(words)))
        if kind == "int":
            if not re.match(r"^-?\d+$", words[0]):
                raise ScallopError("Bad arguments for option '%s': '%s' - wrong "
                                   "arguments format" % (name, words[0]))
            values[name] = int(words[0])
        else:
            values[name] = words[0]

    if not ZK_URL.match(values["zk"]):
        raise ScallopError("Validation failure for 'zk' option parameters: %s"
                           % redact(values["zk"]))
    # MarathonConf: dependsOnAll(mesosAuthentication, List(mesosAuthenticationPrincipal))
    # and mutuallyExclusive(mesosAuthenticationSecret, mesosAuthenticationSecretFile).
    # Scallop counts --disable_mesos_authentication as supplied too.
    if "mesos_authentication" in by_option and "mesos_authentication_principal" not in by_option:
        raise ScallopError("When specifying 'mesos_authentication', you must also "
                           "specify values for 'mesos_authentication_principal'")
    if "mesos_authentication_secret" in by_option and \
            "mesos_authentication_secret_file" in by_option:
        raise ScallopError("There should be only one or zero of the following options: "
                           "mesos_authentication_secret, mesos_authentication_secret_file")
    return values


def log(level, message, logger="mesosphere.marathon.Main$"):
    # Marathon's logback pattern: [date] LEVEL message (logger:thread).
    message = redact(message)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    sys.stdout.write("[%s] %-5s %s (%s:main)\n" % (stamp, level, message, logger))
    sys.stdout.flush()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def info_document(values):
    document = {
        "standin": True,
        "name": "marathon",
        "version": VERSION,
        "buildref": "standin",
        # Set from the election when asked (ElectionService.isLeader and
        # leaderHostPort).
        "elected": False,
        "leader": None,
        # Filled in once the stand-in has registered with a Mesos master.
        "frameworkId": None,
        "event_subscriber": None,
        "marathon_config": {},
        "zookeeper_config": {},
        "http_config": {},
    }
    for name, _, _, section in OPTIONS:
        if section is not None:
            document[section][name] = values[name]
    # InfoResource: "master" -> mesosMaster().redactedConnectionString,
    # "zk" -> zooKeeperUrl().redactedConnectionString.
    document["marathon_config"]["master"] = redacted_url(values["master"])
    document["zookeeper_config"]["zk"] = redacted_url(values["zk"])
    return document


def basic_credentials(values):
    """HttpModule.createSecurityHandler(): --http_credentials (default: the
    MESOSPHERE_HTTP_CREDENTIALS variable) must match `(.+):(.+)` (greedy: the
    user name ends at the LAST colon); anything else is logged and leaves the
    API open."""
    text = values["http_credentials"]
    if text is None:
        return None
    match = re.match(r"^(.+):(.+)$", text)
    if match is None:
        log("ERROR", "The HTTP credentials must be specified in the form of "
                     "'user:password'.", "mesosphere.marathon.api.HttpModule")
        return None
    return match.group(1), match.group(2)


def authorized(credentials, header):
    """Jetty's BasicAuthenticator: `basic` in any case, base64, split at the
    first colon."""
    if credentials is None:
        return True
    if header is None:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip().encode()).decode("iso-8859-1")
    except ValueError:
        return False
    user, colon, password = decoded.partition(":")
    return bool(colon) and (user, password) == credentials


def make_handler(values, framework=None, election=None):
    document = info_document(values)
    credentials = basic_credentials(values)
    realm = values["http_realm"]

    def leader_host_port():
        return election.leader_host_port() if election is not None else None

    def info():
        if framework is not None:
            document["frameworkId"] = framework.get("id")
        document["elected"] = election is not None and election.is_leader()
        document["leader"] = leader_host_port()
        return json.dumps(document, sort_keys=True).encode()

    def leader():
        """LeaderResource.index()."""
        current = leader_host_port()
        if current is None:
            return 404, json.dumps({"message": "There is no leader"}).encode()
        return 200, json.dumps({"leader": current}).encode()

    routes = {
        "/ping": (200, "text/plain; charset=utf-8", b"pong"),
        "/v2/info": (200, "application/json", info),
        "/v2/leader": (200, "application/json", leader),
        "/v2/apps": (200, "application/json", b'{"apps": []}'),
        "/metrics": (200, "application/json", b'{"standin": true}'),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "marathon-standin/" + VERSION

        def do_GET(self):
            if not authorized(credentials, self.headers.get("Authorization")):
                # The constraint covers /* (every path, /ping included).
                body = b"<html><body><h2>HTTP ERROR 401</h2></body></html>"
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'basic realm="%s"' % realm)
                self.send_header("Content-Type", "text/html;charset=iso-8859-1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            path = self.path.split("?", 1)[0].rstrip("/")
            status, content_type, body = routes.get(
                path, (404, "application/json", b'{"message": "not found"}'))
            if callable(body):
                body = body()
                if isinstance(body, tuple):
                    status, body = body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


# ---------------------------------------------------------------------------
# The Mesos side: MarathonSchedulerDriver and the scheduler driver, over the
# Mesos stand-in's own HTTP calls (/master/standin/subscribe). Real Marathon
# uses libmesos' MesosSchedulerDriver: CRAM-MD5 authentication, then
# RegisterFrameworkMessage over libprocess.
# ---------------------------------------------------------------------------

MESOS_SCHEDULER_ERROR = 106  # CrashStrategy.MesosSchedulerError
UNCAUGHT_EXCEPTION = 107  # CrashStrategy.UncaughtException


def crash(code, message, logger):
    log("ERROR", message, logger)
    os._exit(code)


def framework_credential(values):
    """MarathonSchedulerDriver.newDriver(): a credential only with
    --mesos_authentication; the secret is --mesos_authentication_secret, else
    the WHOLE secret file as UTF-8 (no trimming: a trailing newline is part of
    the secret). None without --mesos_authentication."""
    if not values["mesos_authentication"]:
        return None
    principal = values["mesos_authentication_principal"]
    secret = values["mesos_authentication_secret"]
    if secret is None and values["mesos_authentication_secret_file"] is not None:
        path = values["mesos_authentication_secret_file"]
        try:
            with open(path, "rb") as handle:
                secret = handle.read().decode("utf-8", "replace")
        except (IOError, OSError) as error:
            # java.io.FileNotFoundException, thrown out of newDriver (close
            # paraphrase; the exit code is the stand-in's choice).
            crash(UNCAUGHT_EXCEPTION, "java.io.FileNotFoundException: %s (%s)"
                  % (path, error.strerror), "mesosphere.marathon.MarathonSchedulerDriver$")
    credential = {"principal": principal}
    if secret is not None:
        credential["secret"] = secret
    log("INFO", "Authenticate with Mesos as %s" % principal,
        "mesosphere.marathon.MarathonSchedulerDriver$")
    return credential


def framework_info(values):
    info = {
        "name": values["framework_name"],
        "user": values["mesos_user"],
        "failover_timeout": float(values["failover_timeout"]),
        "checkpoint": values["checkpoint"],
        "hostname": values["hostname"],
        "webui_url": values["webui_url"] or "http://%s:%d" % (
            values["hostname"], values["http_port"]),
        "capabilities": [{"type": "PARTITION_AWARE"}],
    }
    if values["mesos_role"] is not None:
        info["role"] = values["mesos_role"]
    # The principal is set whether or not --mesos_authentication is.
    if values["mesos_authentication_principal"] is not None:
        info["principal"] = values["mesos_authentication_principal"]
    return info


def post_json(address, path, document, timeout=3.0):
    request = urllib.request.Request(
        "http://%s:%d%s" % (address["ip"], address["port"], path),
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read().decode() or "null")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read().decode() or "null")
        except ValueError:
            return error.code, None


class Framework(object):
    """Registers with the leading master and follows it, like the agents."""

    def __init__(self, values):
        self.values = values
        self.lock = threading.Lock()
        self.leader = None  # MasterInfo
        self.id = None
        self.pid = "scheduler-%s@%s:%d" % (uuid.uuid4(), values["hostname"],
                                           values["http_port"])
        self.credential = framework_credential(values)
        self.info = framework_info(values)

    def get(self, key):
        with self.lock:
            return getattr(self, key)

    def detected(self, leader):
        with self.lock:
            if leader is not None and (self.leader is None
                                       or leader.get("id") != self.leader.get("id")):
                log("INFO", "New master detected at %s" % leader.get("pid"),
                    "org.apache.mesos.MesosSchedulerDriver")
            self.leader = leader

    def error(self, message):
        """MarathonScheduler.error(): log and crash."""
        log("WARN", "Error: %s\nIn case Mesos does not allow registration with the "
                    "current frameworkId, follow the instructions for recovery here: "
                    "https://mesosphere.github.io/marathon/docs/framework-id.html" % message,
            "mesosphere.marathon.MarathonScheduler")
        os._exit(MESOS_SCHEDULER_ERROR)

    def run(self, static):
        registered_with = None
        while True:
            with self.lock:
                leader = static or self.leader
            if leader is None:
                time.sleep(0.2)
                continue
            try:
                if registered_with is not None and (
                        static is not None or registered_with == leader.get("id")):
                    status, _ = post_json(leader["address"], "/master/standin/framework_ping",
                                          {"id": self.id})
                    if status == 200:
                        time.sleep(1.0)
                        continue
                info = dict(self.info)
                if self.id:
                    info["id"] = self.id
                call = {"framework_info": info, "pid": self.pid}
                if self.credential is not None:
                    call["credential"] = self.credential
                status, answer = post_json(leader["address"], "/master/standin/subscribe", call)
            except (OSError, ValueError):
                time.sleep(0.5)
                continue
            if status == 401:
                # src/sched/sched.cpp: "Master ... refused authentication",
                # then Scheduler::error("Master refused authentication").
                log("ERROR", "Master %s refused authentication" % leader.get("pid"),
                    "org.apache.mesos.MesosSchedulerDriver")
                self.error("Master refused authentication")
            if status == 403 and answer:
                # A FrameworkErrorMessage from the master.
                self.error(answer.get("error", ""))
            if status != 200 or not answer:
                time.sleep(0.5)
                continue
            with self.lock:
                again = self.id is not None
                self.id = answer["framework_id"]
            registered_with = answer["master_info"]["id"]
            if again:
                log("INFO", "Re-registered to %s" % answer["master_info"]["pid"],
                    "mesosphere.marathon.MarathonScheduler")
            else:
                log("INFO", "Registered as %s to master '%s'"
                    % (self.id, answer["master_info"]["id"]),
                    "mesosphere.marathon.MarathonScheduler")


def static_master(text):
    """--master host:port (or master@host:port)."""
    address = text.strip()
    for prefix in ("master@", "http://"):
        if address.startswith(prefix):
            address = address[len(prefix):]
    host, _, port = address.rstrip("/").rpartition(":")
    try:
        ip = socket.gethostbyname(host)
        port = int(port)
    except (OSError, ValueError):
        return None
    return {"id": None, "pid": "master@%s:%d" % (ip, port),
            "address": {"ip": ip, "port": port, "hostname": host}}


# ---------------------------------------------------------------------------
# Marathon's own ZooKeeper: the storage root and the leader latch under
# --zk, with Marathon's ACLs (ZookeeperConf.zkDefaultCreationACL,
# RichCuratorFramework.apply, CuratorElectionStream).
# ---------------------------------------------------------------------------

ZOOKEEPER_CONNECTION_FAILURE = 100  # CrashStrategy.ZookeeperConnectionFailure
LEADERSHIP_ENDED_FAULTY = 104  # CrashStrategy.LeadershipEndedFaulty

# KeeperException subclasses and codes, for the Java exception text Curator
# logs: org.apache.zookeeper.KeeperException$NoAuthException:
# KeeperErrorCode = NoAuth for /marathon/state
_KEEPER_EXCEPTIONS = [
    ("NoAuthError", "NoAuthException", "NoAuth", -102),
    ("NoNodeError", "NoNodeException", "NoNode", -101),
    ("NodeExistsError", "NodeExistsException", "NodeExists", -110),
    ("InvalidACLError", "InvalidACLException", "InvalidACL", -114),
    ("AuthFailedError", "AuthFailedException", "AuthFailed", -115),
    ("ConnectionLoss", "ConnectionLossException", "ConnectionLoss", -4),
]


def keeper_exception(error, path):
    """(Java exception text, result code) for a kazoo error."""
    from kazoo import exceptions
    for name, java, code_name, code in _KEEPER_EXCEPTIONS:
        if isinstance(error, getattr(exceptions, name)):
            return ("org.apache.zookeeper.KeeperException$%s: KeeperErrorCode = %s for %s"
                    % (java, code_name, path), code)
    return "org.apache.zookeeper.KeeperException: %r" % (error,), -1


class Election(object):
    """Marathon's ZooKeeper client and leader election.

    --zk zk://user:pass@hosts/path: the session authenticates with digest
    `user:pass` (ZkCreds.authInfoDigest); znodes are created with
    CREATOR_ALL_ACL, or OPEN_ACL_UNSAFE without credentials
    (zkDefaultCreationACL); <path>/leader-curator also gets READ_ACL_UNSAFE
    (the ACLProvider of RichCuratorFramework.apply). At start Marathon
    connects (or exits 100 after --zk_connection_timeout), creates its
    storage root <path>/state (Curator's namespace, parents first, each with
    the provider's ACL), then with --ha starts a Curator LeaderLatch at
    <path>/leader-curator: an ephemeral sequential _c_<uuid>-latch-<seq>
    holding host:port. Without --ha it leads once connected.

    Stand-in simplifications: every instance whose latch node was created
    acts as the leader (there is no ordering of the latch); a refused latch
    leaves it in standby, and when the latch's children cannot even be
    listed the leadership stream times out and Marathon exits (104)."""

    def __init__(self, values, host_port):
        from kazoo.client import KazooClient
        from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE, READ_ACL_UNSAFE
        user, password, hosts, path = ZK_URL.match(values["zk"]).groups()
        self.values = values
        self.host_port = host_port
        self.acl = list(CREATOR_ALL_ACL if user is not None else OPEN_ACL_UNSAFE)
        self.state_path = path + "/state"  # zooKeeperStateUrl
        self.leader_path = path + "/leader-curator"  # zooKeeperLeaderCuratorUrl
        self.leader_acl = self.acl + list(READ_ACL_UNSAFE)
        self.connection_timeout = values["zk_connection_timeout"] / 1000.0
        auth = [("digest", "%s:%s" % (user, password))] if user is not None else None
        self.client = KazooClient(
            hosts=hosts, timeout=max(values["zk_session_timeout"] / 1000.0, 1.0),
            auth_data=auth,
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 1.0})
        self.lock = threading.Lock()
        self.leading = False
        self.on_elected = []

    def is_leader(self):
        with self.lock:
            return self.leading

    def leader_host_port(self):
        # The stand-in knows no other leader than itself.
        return self.host_port if self.is_leader() else None

    def start(self):
        thread = threading.Thread(target=self._run)
        thread.daemon = True
        thread.start()

    def _acl_for(self, path):
        return self.leader_acl if path == self.leader_path else self.acl

    def _mkdirs(self, path):
        """ZKPaths.mkdirs(): each missing node from the top, with the ACL the
        provider gives its path; one created meanwhile is fine."""
        from kazoo.exceptions import NodeExistsError
        current = ""
        for node in path.strip("/").split("/"):
            current += "/" + node
            if self.client.exists(current) is None:
                try:
                    self.client.create(current, b"", acl=self._acl_for(current))
                except NodeExistsError:
                    pass

    def _run(self):
        try:
            self.client.start(timeout=self.connection_timeout)
        except Exception:
            # RichCuratorFramework.blockUntilConnected()
            log("ERROR", "Failed to connect to ZK. Marathon will exit now.",
                "mesosphere.marathon.core.storage.store.impl.zk.RichCuratorFramework")
            os._exit(ZOOKEEPER_CONNECTION_FAILURE)
        try:
            # Curator's NamespaceImpl: the storage root, before first use.
            self._mkdirs(self.state_path)
        except Exception as error:
            text, _ = keeper_exception(error, self.state_path)
            log("ERROR", "Ensure path threw exception\n" + text,
                "org.apache.curator.framework.imps.CuratorFrameworkImpl")
        if not self.values["ha"]:
            # PsuedoElectionStream: the only instance leads.
            self._elected()
            return
        log("INFO", "starting leader latch", "mesosphere.marathon.core.election.CuratorElectionStream$")
        latch = self.leader_path + "/_c_%s-latch-" % uuid.uuid4()
        try:
            # LeaderLatch.reset(): creatingParentContainersIfNeeded,
            # withProtection, EPHEMERAL_SEQUENTIAL, the id as data.
            self._mkdirs(self.leader_path)
            self.client.create(latch, self.host_port.encode(), acl=self._acl_for(latch),
                               ephemeral=True, sequence=True)
        except Exception as error:
            _, code = keeper_exception(error, latch)
            log("ERROR", "getChildren() failed. rc = %d" % code,
                "org.apache.curator.framework.recipes.leader.LeaderLatch")
            self._never_elected()
            return
        self._elected()

    def _elected(self):
        with self.lock:
            self.leading = True
            callbacks, self.on_elected = self.on_elected, []
        log("INFO", "Leader won.", "mesosphere.marathon.core.election.CuratorElectionStream$")
        log("INFO", "Elected as leader: %s" % self.host_port,
            "mesosphere.marathon.core.election.ElectionServiceImpl")
        for callback in callbacks:
            callback()

    def _never_elected(self):
        """CuratorElectionStream without a latch node: it polls the latch's
        children; when it cannot list them no element passes before
        .initialTimeout(zk_connection_timeout) and ElectionServiceImpl ends
        Marathon. When it can, Marathon stays in standby."""
        time.sleep(self.connection_timeout)
        try:
            self.client.get_children(self.leader_path)
        except Exception:
            log("INFO", "Leadership ended with failure; exiting\n"
                "java.util.concurrent.TimeoutException: The first element has not yet "
                "passed through in %d milliseconds." % self.values["zk_connection_timeout"],
                "mesosphere.marathon.core.election.ElectionServiceImpl")
            os._exit(LEADERSHIP_ENDED_FAULTY)
        log("INFO", "Leader defeated. Current leader: -",
            "mesosphere.marathon.core.election.CuratorElectionStream$")


# ---------------------------------------------------------------------------
# The scheduler driver's master detector: libmesos's zookeeper::Group.
# ---------------------------------------------------------------------------

# zerror() texts for the errors Mesos's ZooKeeper::retryable() does not retry.
_ZERROR = [
    ("NoAuthError", "not authenticated"),
    ("NoNodeError", "no node"),
    ("InvalidACLError", "invalid acl"),
    ("AuthFailedError", "authentication failed"),
    ("BadArgumentsError", "bad arguments"),
]


def driver_exit(message):
    """EXIT(EXIT_FAILURE) in libmesos (src/sched/sched.cpp detected()): a
    glog line on stderr, then the whole JVM exits with status 1."""
    now = datetime.datetime.now()
    sys.stderr.write("E%s %s %5d sched.cpp:0] EXIT with status 1: %s\n"
                     % (now.strftime("%m%d"), now.strftime("%H:%M:%S.%f"), os.getpid(),
                        redact(message)))
    sys.stderr.flush()
    os._exit(1)


def watch_leader(url, framework):
    """The driver's ZooKeeper master detector (src/zookeeper/group.cpp in
    libmesos): digest authentication with the URL's credentials, the base
    path created if missing (EVERYONE_READ_CREATOR_ALL with credentials,
    OPEN_ACL_UNSAFE without), then the lowest json.info_ znode under it
    holds the leading master's MasterInfo. A NoAuth (or any error Mesos does
    not retry) ends the process: "Failed to detect a master: ..."."""
    try:
        from kazoo.client import KazooClient
        from kazoo import exceptions
        from kazoo.security import (ACL, ANYONE_ID_UNSAFE, AUTH_IDS,
                                    OPEN_ACL_UNSAFE, Permissions)
    except ImportError:
        log("ERROR", "The TEST STAND-IN needs python3-kazoo to follow a zk:// "
                     "--master; not registering with Mesos")
        return
    rest = url.strip()[len("zk://"):]
    servers, slash, path = rest.partition("/")
    path = ("/" + path).rstrip("/") or "/"
    auth = None
    acl = OPEN_ACL_UNSAFE
    if "@" in servers:
        credentials, servers = servers.rsplit("@", 1)
        auth = [("digest", credentials)]
        acl = [ACL(Permissions.READ, ANYONE_ID_UNSAFE), ACL(Permissions.ALL, AUTH_IDS)]
    client = KazooClient(hosts=servers, auth_data=auth,
                         connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 1.0})

    def final(error):
        for name, text in _ZERROR:
            if isinstance(error, getattr(exceptions, name)):
                return text
        return None

    def create(node):
        if client.exists(node) is not None:
            return
        parent = node[:node.rfind("/")]
        if parent:
            create(parent)
        try:
            client.create(node, b"", acl=acl)
        except exceptions.NodeExistsError:
            pass

    def run():
        client.start_async()
        created = False
        while True:
            if not client.connected:
                time.sleep(0.2)
                continue
            step = "create"
            try:
                if not created and path != "/":
                    create(path)
                created = True
                step = "children"
                children = client.get_children(path)
                members = []
                for child in children:
                    prefix, _, number = child.rpartition("_")
                    if prefix == "json.info" and number.isdigit():
                        members.append((int(number), child))
                leader = None
                if members:
                    step = "data"
                    node = path.rstrip("/") + "/" + min(members)[1]
                    try:
                        data, _ = client.get(node)
                        leader = json.loads(data.decode())
                    except exceptions.NoNodeError:
                        leader = None
                framework.detected(leader)
            except Exception as error:
                text = final(error)
                if text is None:  # retryable: connection loss, timeouts
                    time.sleep(0.5)
                    continue
                if step == "create":
                    driver_exit("Failed to detect a master: Failed to create '%s' in "
                                "ZooKeeper: %s" % (path, text))
                if step == "children":
                    driver_exit("Failed to detect a master: Non-retryable error attempting "
                                "to get children of '%s' in ZooKeeper: %s" % (path, text))
                driver_exit("Failed to detect a master: Failed to get data for ephemeral "
                            "node '%s' in ZooKeeper: %s" % (node, text))
            time.sleep(0.5)

    thread = threading.Thread(target=run)
    thread.daemon = True
    thread.start()


def main(argv, environ):
    args = env_to_args(environ) + argv[1:]
    # Not something Marathon prints: it lets a test VM's journal show exactly
    # what the environment file and the unit passed (credentials masked).
    sys.stderr.write("marathon-standin: argv: %s\n" % json.dumps([redact(a) for a in args]))
    sys.stderr.flush()
    try:
        values = parse(args)
    except ScallopError as error:
        sys.stderr.write("[scallop] Error: %s\n" % error)
        return 1
    log("INFO", "Starting Marathon %s/standin with %s" % (VERSION, " ".join(args)))
    if values["disable_http"]:
        log("ERROR", "The Marathon stand-in serves plain HTTP only; "
                     "--disable_http is not supported")
        return 1
    if values["http_credentials"] is None:
        values["http_credentials"] = environ.get("MESOSPHERE_HTTP_CREDENTIALS")
    try:
        from kazoo.client import KazooClient  # noqa: F401 (checked up front)
    except ImportError:
        log("ERROR", "The TEST STAND-IN needs python3-kazoo for --zk")
        return 1
    framework = Framework(values)
    host_port = "%s:%d" % (values["hostname"], values["http_port"])
    election = Election(values, host_port)
    address = values["http_address"] or "0.0.0.0"
    try:
        server = _Server((address, values["http_port"]),
                         make_handler(values, framework, election))
    except OSError as error:
        log("ERROR", "Failed to bind to %s:%d: %s" % (
            address, values["http_port"], os.strerror(error.errno) if error.errno else error))
        return 1
    log("INFO", "Started HTTP server on %s:%d" % (address, values["http_port"]),
        "mesosphere.marathon.api.HttpModule")

    def start_driver():
        """Only the leader runs the scheduler driver (MarathonSchedulerService)."""
        master = values["master"].strip()
        static = None
        if master.startswith("zk://"):
            watch_leader(master, framework)
        else:
            static = static_master(master)
            if static is None:
                log("ERROR", "Cannot parse --master %s; not registering with Mesos" % master)
                return
        thread = threading.Thread(target=framework.run, args=(static,))
        thread.daemon = True
        thread.start()

    election.on_elected.append(start_driver)
    election.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv, os.environ))
