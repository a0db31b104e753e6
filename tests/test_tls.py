"""Links over wss://: a node serves TLS with [tls] cert/key and dials peers trusting [tls] ca."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import fednode

from conftest import node_config


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TestTLS:
    """A wss:// peer link authenticates and carries requests; an untrusted certificate is refused."""

    async def test_wss_link(self, tmp_path: Path) -> None:
        cert, key = self_signed(tmp_path, "node-b")
        b_config = node_config("node-b", peers=[{"id": "node-a"}],
                               node={"control": "wss://127.0.0.1:0"}, tls={"cert": str(cert), "key": str(key)})
        with trio.fail_after(60):
            async with fednode.open_node(b_config) as b:
                assert b.control_url.startswith("wss://127.0.0.1:")
                async with fednode.open_node(node_config("node-a", tls={"ca": str(cert)})) as a:
                    await a.register_peer(fednode.PeerConfig(id="node-b", control=b.control_url))
                    assert await a.request("node-b", "echo", "over tls") == "over tls"

    async def test_untrusted_certificate_refused(self, tmp_path: Path) -> None:
        cert, key = self_signed(tmp_path, "node-b")
        other, _ = self_signed(tmp_path, "other")
        b_config = node_config("node-b", peers=[{"id": "node-a"}],
                               node={"control": "wss://127.0.0.1:0"}, tls={"cert": str(cert), "key": str(key)})
        with trio.fail_after(60):
            async with fednode.open_node(b_config) as b, \
                    fednode.open_node(node_config("node-a", tls={"ca": str(other)})) as a:
                with pytest.raises(fednode.PeerConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await a.register_peer(fednode.PeerConfig(id="node-b", control=b.control_url),
                                          keep_retrying=False)
                assert b.connected_peers() == []

    async def test_https_data_endpoint(self, tmp_path: Path) -> None:
        import httpx2

        cert, key = self_signed(tmp_path, "node-a")
        config = node_config("node-a", node={"data": "https://127.0.0.1:0"}, tls={"cert": str(cert), "key": str(key)})
        with trio.fail_after(60):
            async with fednode.open_node(config) as a:
                assert a.data_url.startswith("https://127.0.0.1:")
                async with httpx2.AsyncClient(verify=ssl.create_default_context(cafile=str(cert))) as http:
                    response = await http.get(a.data_url + "/healthz")
                assert response.status_code == 200

    def test_https_needs_a_certificate(self) -> None:
        with pytest.raises(fednode.ConfigError, match=r"node\.data: an https:// data address needs"):
            node_config("node-a", node={"data": "https://127.0.0.1:0"})
