"""TLS and SASL/SCRAM on the local broker's client listener (see :class:`streams.broker.LocalBroker`).

Without a :class:`BrokerSecurity` the local broker listens in PLAINTEXT. With one,
its single client listener speaks TLS (``SSL``), or TLS plus SCRAM-SHA-512
logins (``SASL_SSL``) when SCRAM users are given. The same listener carries the
broker's own inter-broker traffic (on one node: transaction markers), so the
only other port is the KRaft controller listener on localhost.

The broker authenticates to itself as :data:`BROKER_USER`, whose random
password is kept in ``<state_dir>/broker.secret`` (mode 0600) beside
``server.properties`` (also 0600: it holds that password).

SCRAM credentials are written into the metadata log when the storage is
formatted (``kafka-storage format --add-scram``): users are fixed at the first
start; start with ``reset=True`` to change them. Passwords pass through the
format command's arguments, which other local users can read while it runs
(a second or two): this is a development broker.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from streams.errors import KafkaSetupError

__all__ = ["BROKER_USER", "SCRAM_MECHANISM", "BrokerSecurity", "write_private"]

SCRAM_MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "streamrec-broker"
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,128}")
_PASSWORD = re.compile(r"[^\s,\[\]=\"'\\;]{1,256}")  # what the format command's --add-scram syntax can carry


@dataclass(frozen=True)
class BrokerSecurity:
    """PEM files of the broker's identity and trust, and the SCRAM users to create.

    ``certfile`` holds the broker's certificate (and any intermediates), ``keyfile``
    its private key (PKCS#8, unencrypted), ``cafile`` the CA that clients use to
    verify the broker (``kafka.ssl_cafile``) and that the broker uses to verify
    itself on inter-broker connections, so the certificate must name the
    broker's host. ``scram_users`` maps user names to passwords.
    """

    certfile: Path
    keyfile: Path
    cafile: Path
    scram_users: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def protocol(self) -> str:
        """The client listener's security protocol: ``SASL_SSL`` with SCRAM users, else ``SSL``."""
        return "SASL_SSL" if self.scram_users else "SSL"

    def validate(self) -> None:
        """Raise :class:`KafkaSetupError` naming the first missing file or unusable user name or password."""
        for role in ("certfile", "keyfile", "cafile"):
            path = Path(getattr(self, role))
            if not path.is_file():
                raise KafkaSetupError(f"broker TLS {role} {path} does not exist")
        for name, password in self.scram_users.items():
            if not _NAME.fullmatch(name) or name == BROKER_USER:
                raise KafkaSetupError(f"SCRAM user name {name!r} is not usable: letters, digits and ._@- only, "
                                      f"and not {BROKER_USER!r}")  # fmt: skip
            if not _PASSWORD.fullmatch(password):
                raise KafkaSetupError(f"the SCRAM password of {name!r} is not usable: 1-256 characters without "
                                      "whitespace, quotes, backslashes or any of , [ ] = ;")  # fmt: skip

    # ------------------------------------------------ what the launcher writes

    def broker_password(self, state_dir: Path) -> str:
        """The broker's own SCRAM password, created once per state directory."""
        path = Path(state_dir) / "broker.secret"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        write_private(path, password)
        return password

    def write_keystore(self, path: Path) -> Path:
        """Kafka's PEM key store: the private key followed by the certificate chain (mode 0600)."""
        write_private(path, Path(self.keyfile).read_text().rstrip() + "\n" + Path(self.certfile).read_text())
        return path

    def server_properties(self, keystore: Path, broker_password: str) -> dict[str, str]:
        """Broker settings of the TLS (and SASL) listener, named after its protocol."""
        props = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.cafile),
            "ssl.client.auth": "none",
        }
        if self.scram_users:
            listener = self.protocol.lower()
            props |= {
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                f"listener.name.{listener}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{BROKER_USER}" password="{broker_password}";'
                ),
            }
        return props

    def format_args(self, broker_password: str) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM users (the broker's own first)."""
        users = {BROKER_USER: broker_password, **self.scram_users} if self.scram_users else {}
        return [arg for name, password in users.items()
                for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")]  # fmt: skip

    def passwords(self, broker_password: str) -> list[str]:
        """Every password this configuration carries (to mask in error output)."""
        return [broker_password, *self.scram_users.values()] if self.scram_users else []

    def client_kwargs(self, broker_password: str) -> dict[str, Any]:
        """kafka-python arguments of the launcher's own health check (as the broker user).

        The launcher checks only that its own broker answers, so it verifies the
        certificate chain but not the host name: a broker given a certificate for
        another name still starts, and clients (``ssl_check_hostname``) refuse it.
        """
        kwargs: dict[str, Any] = {"security_protocol": self.protocol, "ssl_cafile": str(self.cafile),
                                  "ssl_check_hostname": False}  # fmt: skip
        if self.scram_users:
            kwargs |= {"sasl_mechanism": SCRAM_MECHANISM, "sasl_plain_username": BROKER_USER,
                       "sasl_plain_password": broker_password}  # fmt: skip
        return kwargs


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never world-readable in between)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
