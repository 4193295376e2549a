"""The tang client and clevis pins against the REAL tangd and the REAL clevis.

Every JWE here is made by ``clevis encrypt`` / ``clevis luks bind`` (Debian's clevis) against
Debian's ``tangd`` on loopback; decrypting it with cryptboot's own code is the compatibility
proof. Keys are rotated the way tang documents it. A LUKS2 image file bound with ``clevis luks
bind`` is opened through the token with ``cryptsetup open --test-passphrase`` (no device-mapper
needed), racing a prompt that the token withdraws.
"""

from __future__ import annotations

import json
import select
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cryptboot.config.model import DeviceSpec, KeyKind, SpecKind, Volume, VolumeOptions
from cryptboot.errors import WrongKey
from cryptboot.keys import Key, KeyEnv, clevis, tang, unlock_with_keys
from cryptboot.keys.prompt import Answer, Control
from cryptboot.keys.tokens import read_tokens, token_sources
from tests.tang_helpers import (
    TangServer,
    clevis_encrypt,
    clevis_luks_bind,
    free_port,
    make_keys,
    rotate_keys,
    tang_missing,
)

pytestmark = pytest.mark.skipif(tang_missing() is not None, reason=str(tang_missing()))

PASS = b"correct horse"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TangServer, TangServer]]:
    base = tmp_path_factory.mktemp("tang")
    a = TangServer(base / "a")
    b = TangServer(base / "b")
    make_keys(a.db)
    make_keys(b.db)
    yield a, b
    a.close()
    b.close()


def soon(seconds: float = 5.0) -> clevis.Context:
    return clevis.Context(time.monotonic() + seconds)


def test_decrypts_a_real_clevis_tang_jwe(servers: tuple[TangServer, TangServer]) -> None:
    a, _ = servers
    jwe = clevis.Jwe.parse(clevis_encrypt("tang", json.dumps({"url": a.url}), b"secret 1"))
    assert jwe.pin == "tang" and jwe.describe() == f"tang {a.url}"
    assert clevis.decrypt(jwe, soon()) == b"secret 1"


def test_a_changed_header_does_not_decrypt(servers: tuple[TangServer, TangServer]) -> None:
    a, _ = servers
    text = clevis_encrypt("tang", json.dumps({"url": a.url}), b"secret 2")
    jwe = clevis.Jwe.parse(text)
    header = dict(jwe.header, apu=tang.b64e(b"x"))  # still a valid header, not the one sealed
    forged = ".".join([tang.b64e(json.dumps(header).encode())] + text.split(".")[1:])
    with pytest.raises(clevis.ClevisError, match="does not decrypt"):
        clevis.decrypt(clevis.Jwe.parse(forged), soon())


def test_advertisement_signature_verified(servers: tuple[TangServer, TangServer]) -> None:
    a, _ = servers
    keys = tang.fetch_adv(a.url)
    assert {tuple(k["key_ops"]) for k in keys} == {("verify",), ("deriveKey",)}
    names = {p.stem for p in a.db.iterdir() if not p.name.startswith(".")}
    assert {tang.thumbprint(k) for k in keys} == names  # tangd names keys by S256 thumbprint
    import urllib.request

    with urllib.request.urlopen(f"{a.url}/adv") as r:
        jws = json.loads(r.read())
    payload = json.loads(tang.b64d(jws["payload"]))
    payload["keys"] = [k for k in payload["keys"] if "verify" in k["key_ops"]]
    jws["payload"] = tang.b64e(json.dumps(payload).encode())  # a key dropped: not what was signed
    with pytest.raises(tang.TangError, match="not signed"):
        tang.verify_adv(jws)


def test_rotated_keys_still_recover(tmp_path: Path) -> None:
    srv = TangServer(tmp_path / "rot")
    try:
        old = make_keys(srv.db)
        text = clevis_encrypt("tang", json.dumps({"url": srv.url}), b"before rotation")
        rotate_keys(srv.db)
        advertised = {tang.thumbprint(k) + ".jwk" for k in tang.fetch_adv(srv.url)}
        assert not advertised & set(old)  # the old keys are hidden ...
        assert {"." + n for n in old} <= {p.name for p in srv.db.iterdir()}
        # ... and still serve the recovery of what was bound to them
        assert clevis.decrypt(clevis.Jwe.parse(text), soon()) == b"before rotation"
    finally:
        srv.close()


def test_sss_threshold_one_with_a_server_down(tmp_path: Path) -> None:
    up = TangServer(tmp_path / "up")
    down = TangServer(tmp_path / "down")
    make_keys(up.db)
    make_keys(down.db)
    conf = {"t": 1, "pins": {"tang": [{"url": down.url}, {"url": up.url}]}}
    text = clevis_encrypt("sss", json.dumps(conf), b"shared secret")
    down.close()
    try:
        jwe = clevis.Jwe.parse(text)
        assert jwe.describe() == f"sss 1 of [tang {down.url}, tang {up.url}]"
        t0 = time.monotonic()
        assert clevis.decrypt(jwe, soon(20)) == b"shared secret"
        assert time.monotonic() - t0 < 10  # not the 20 s the down server could have cost
        conf2 = {"t": 2, "pins": {"tang": [{"url": up.url}, {"url": up.url}]}}
        both = clevis_encrypt("sss", json.dumps(conf2), b"two of two")
        assert clevis.decrypt(clevis.Jwe.parse(both), soon()) == b"two of two"
    finally:
        up.close()


def test_sss_threshold_not_met_names_the_server(servers: tuple[TangServer, TangServer],
                                                tmp_path: Path) -> None:
    a, _ = servers
    gone = TangServer(tmp_path / "gone")
    make_keys(gone.db)
    conf = {"t": 2, "pins": {"tang": [{"url": a.url}, {"url": gone.url}]}}
    text = clevis_encrypt("sss", json.dumps(conf), b"x")
    gone.close()
    with pytest.raises(clevis.ClevisError) as e:
        clevis.decrypt(clevis.Jwe.parse(text), soon(1.5))
    assert "1 of the 2 shares needed" in e.value.message
    assert gone.url in e.value.message and "Connection refused" in e.value.message


def test_unreachable_server_retries_until_the_timeout(servers: tuple[TangServer, TangServer]
                                                      ) -> None:
    a, _ = servers
    jwe = clevis.Jwe.parse(clevis_encrypt("tang", json.dumps({"url": a.url}), b"x"))
    # the same binding, pointed at a port nobody listens on (the header is then not the
    # sealed one, but the server is never reached, which is what this test is about)
    url = f"http://127.0.0.1:{free_port()}"
    jwe.header["clevis"]["tang"]["url"] = url
    t0 = time.monotonic()
    with pytest.raises(clevis.ClevisError) as e:
        clevis.decrypt(jwe, soon(2.5))
    waited = time.monotonic() - t0
    assert 2.4 < waited < 6
    msg = e.value.message
    assert msg.startswith(f"tang server {url} did not answer within ") and \
        msg.endswith("Connection refused") and "\n" not in msg


def test_a_server_that_comes_up_late_is_reached(tmp_path: Path) -> None:
    srv = TangServer(tmp_path / "late")
    make_keys(srv.db)
    text = clevis_encrypt("tang", json.dumps({"url": srv.url}), b"late")
    port = srv.port
    srv.close()
    box: dict[str, bytes] = {}

    def go() -> None:
        box["out"] = clevis.decrypt(clevis.Jwe.parse(text), soon(15))

    th = threading.Thread(target=go)
    th.start()
    time.sleep(1.2)  # a few refused tries, then the server appears on the same port
    again = TangServer(srv.db, port)
    th.join(20)
    again.close()
    assert box.get("out") == b"late"


def test_cancel_stops_the_retry_at_once() -> None:
    ev = threading.Event()
    threading.Timer(0.3, ev.set).start()
    t0 = time.monotonic()
    srv_key = _some_exchange_key()
    with pytest.raises(tang.TangUnreachable, match="cancelled"):
        tang.recover_with_retry(f"http://127.0.0.1:{free_port()}", srv_key, "kid", srv_key,
                                time.monotonic() + 30, ev)
    assert time.monotonic() - t0 < 3


def _some_exchange_key() -> dict[str, object]:
    from cryptography.hazmat.primitives.asymmetric import ec

    n = ec.generate_private_key(ec.SECP521R1()).public_key().public_numbers()
    return tang.point_jwk("P-521", (n.x, n.y))


def test_point_arithmetic_matches_openssl() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    for crv, curve in (("P-256", ec.SECP256R1()), ("P-521", ec.SECP521R1())):
        k1 = ec.derive_private_key(7, curve).public_key().public_numbers()
        k2 = ec.derive_private_key(11, curve).public_key().public_numbers()
        k3 = ec.derive_private_key(18, curve).public_key().public_numbers()
        k14 = ec.derive_private_key(14, curve).public_key().public_numbers()
        assert tang.point_add(crv, (k1.x, k1.y), (k2.x, k2.y)) == (k3.x, k3.y)
        assert tang.point_add(crv, (k1.x, k1.y), (k1.x, k1.y)) == (k14.x, k14.y)
        assert tang.point_add(crv, (k1.x, k1.y), (k1.x, -k1.y % tang.CURVES[crv][0])) is None
        assert (k1.x, k1.y) in tang.lift_x(crv, k1.x)


def test_clevis_tpm2_pin_is_refused_with_the_reason() -> None:
    hdr = tang.b64e(json.dumps({"alg": "dir", "enc": "A256GCM",
                                "clevis": {"pin": "tpm2", "tpm2": {}}}).encode())
    jwe = clevis.Jwe.parse(f"{hdr}..AAAA.AAAA.AAAA")
    with pytest.raises(clevis.ClevisError, match="systemd-cryptenroll"):
        clevis.decrypt(jwe, soon())


# ---------------------------------------------------------------------------------------------
# the token in a LUKS2 header, through the provider, racing the prompt


@pytest.fixture(scope="module")
def bound_image(servers: tuple[TangServer, TangServer],
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    a, _ = servers
    img = tmp_path_factory.mktemp("luks") / "bound.img"
    with open(img, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode",
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-",
                    str(img)], input=PASS, check=True, capture_output=True)
    clevis_luks_bind(img, PASS, "tang", json.dumps({"url": a.url}))
    return img


def test_plain_luks2_header_adds_no_source(tmp_path: Path) -> None:
    img = tmp_path / "plain.img"
    with open(img, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode",
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-",
                    str(img)], input=PASS, check=True, capture_output=True)
    v = Volume("root", DeviceSpec(SpecKind.PATH, str(img)), ())
    assert token_sources(v, str(img)) is v


def test_luks1_luksmeta_is_refused_with_the_reason(tmp_path: Path,
                                                   servers: tuple[TangServer, TangServer],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if subprocess.run(["sh", "-c", "command -v luksmeta"], capture_output=True).returncode:
        pytest.skip("needs luksmeta (clevis luks bind of LUKS1)")
    a, _ = servers
    img = tmp_path / "l1.img"
    with open(img, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode",
                    "--pbkdf-force-iterations", "1000", "--key-file=-", str(img)],
                   input=PASS, check=True, capture_output=True)
    clevis_luks_bind(img, PASS, "tang", json.dumps({"url": a.url}))
    v = Volume("root", DeviceSpec(SpecKind.PATH, str(img)), ())
    assert token_sources(v, str(img)) is v
    assert "LUKS1 volume with luksmeta" in capsys.readouterr().err


def _test_opener(img: Path, log: list[tuple[str, bytes]]) -> object:
    def opener(key: Key) -> None:
        log.append((key.kind.value, key.data))
        p = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file=-",
                            str(img)], input=key.data, capture_output=True)
        if p.returncode == 2:
            raise WrongKey("no key")
        p.check_returncode()
    return opener


class WaitingPrompt:
    """A prompt that waits for an answer that never comes, unless withdrawn (or ``answer_after``
    seconds pass: then it answers ``answer``); it keeps the notices shown on it."""

    def __init__(self, answer: bytes | None = None, answer_after: float = 60.0) -> None:
        self.answer = answer
        self.after = answer_after
        self.shown = 0
        self.withdrawn_with = ""
        self.notices: list[str] = []
        self.shown_at = 0.0

    def ask(self, text: str, consoles: Sequence[str], timeout: float | None,
            control: Control | None = None) -> Answer:
        self.shown += 1
        self.shown_at = time.monotonic()
        assert control is not None
        end = time.monotonic() + self.after
        while (left := end - time.monotonic()) > 0:
            r, _, _ = select.select([control.fileno()], [], [], left)
            for kind, line in control.take() if r else []:
                if kind == "withdraw":
                    self.withdrawn_with = line
                    return Answer(None, None, "withdrawn")
                self.notices.append(line)
        return Answer(self.answer, consoles[0], "ok" if self.answer else "eof")


def test_token_withdraws_the_prompt(bound_image: Path) -> None:
    img = str(bound_image)
    tokens = read_tokens(img)
    assert [t["type"] for t in tokens.values()] == ["clevis"]
    v = token_sources(Volume("root", DeviceSpec(SpecKind.PATH, img), ()), img)
    assert [k.kind for k in v.keys] == [KeyKind.CLEVIS]
    prompt = WaitingPrompt()
    tried: list[tuple[str, bytes]] = []
    key = unlock_with_keys(v, img, KeyEnv(consoles=["/dev/null"], ask=prompt.ask),
                           _test_opener(bound_image, tried))  # type: ignore[arg-type]
    assert key.kind is KeyKind.CLEVIS and [k for k, _ in tried] == ["clevis"]
    assert prompt.withdrawn_with.startswith("root unlocked with the clevis token 0 (tang ")
    assert prompt.shown <= 1


def test_server_down_prompt_answers_without_waiting(bound_image: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "copy.img"
    img.write_bytes(bound_image.read_bytes())
    token = read_tokens(str(img))[0]
    url = f"http://127.0.0.1:{free_port()}"
    # point the token at a dead server: rewrite the token through cryptsetup itself
    jwe = clevis.Jwe.parse(token["jwe"])
    jwe.header["clevis"]["tang"]["url"] = url
    prot = tang.b64e(json.dumps(jwe.header).encode())
    token["jwe"] = dict(token["jwe"], protected=prot)
    subprocess.run(["cryptsetup", "token", "remove", "--token-id", "0", str(img)], check=True)
    subprocess.run(["cryptsetup", "token", "import", "--token-id", "0", str(img)],
                   input=json.dumps(token).encode(), check=True)
    v = token_sources(Volume("root", DeviceSpec(SpecKind.PATH, str(img)), (),
                             VolumeOptions(token_timeout=2.0)), str(img))
    prompt = WaitingPrompt(answer=PASS, answer_after=3.5)
    tried: list[tuple[str, bytes]] = []
    t0 = time.monotonic()
    key = unlock_with_keys(v, str(img), KeyEnv(consoles=["/dev/null"], ask=prompt.ask),
                           _test_opener(img, tried))  # type: ignore[arg-type]
    assert key.kind is KeyKind.PROMPT and tried == [("prompt", PASS)]
    assert prompt.shown_at - t0 < 1.0   # the prompt at once
    assert time.monotonic() - t0 < 5.5  # and nothing waited for the token after the answer
    assert prompt.notices == [f"root: clevis token 0: tang server {url} did not answer within "
                              "2 s: Connection refused; trying the next key source"]
