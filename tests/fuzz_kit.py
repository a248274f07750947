"""The purse card's fuzz harness, shared by ``tests/test_fuzz.py`` and ``bench/fuzz_card.py``.

* :func:`world` builds, once, the card under test and everything around it:
  the card image (the ``funded`` card of ``docs/protocol.md``: ``CARD0001``,
  the documents' issuer key, a credential, balance 10000), two more cards for
  transfers (``CARD0002``, and ``CARD0003`` in US dollars), and a corpus of
  valid APDUs: every ``>`` line of
  the worked examples, and real sessions recorded on copies of the card
  (GET DATA of every tag, VERIFY, CHANGE PIN, PAY, BEGIN ONLINE and signed
  ISSUER UPDATEs, a real LOCK, transfers in both roles with real messages
  from the second card, and issuer-signed objects the card must refuse deep
  in their checks).
* :class:`FuzzCard` is a card on that image, with a deterministic random
  source and a backend that counts its saves; :meth:`FuzzCard.restore` puts
  it back in the image (cheaper than personalising again), :meth:`FuzzCard.send`
  runs one APDU through the oracle and :meth:`FuzzCard.pay_check` proves the
  card still serves a valid PAY.
* The oracle (:func:`check_exchange`): no exception out of ``Card.process``;
  a response of at least two bytes whose status word is one the protocol
  documents for that command (``6F00``, an unexpected error in card code, is
  a finding), with no data on a refusal and never more than Ne bytes; on every
  answer but ``9000`` / ``61XX`` the committed store is byte-identical, but
  for the one documented write (a wrong PIN in VERIFY or CHANGE PIN spends
  exactly one try, ``63CX``); on success the committed store is exactly what
  a reference model of the command computes from the store before. The model
  accepts a change of life cycle, a credit or a new credential only when the
  APDU carries an object that really verifies with the issuer's key or the
  other card's certified key: a forged object that gets through is a finding.
  A shadow of the card's transient session (:class:`Transient`: PIN verified,
  online-session nonce, bytes waiting for GET RESPONSE) is kept from the
  answers, so that a payment above the no-PIN limit without the PIN, the
  history without the PIN, an update outside its session or a GET RESPONSE
  that returns other bytes than the ``61XX`` announced are findings too.
* The mutators (:func:`mutate`, :func:`mutate_data`, :func:`splice`) and the message builders
  (:func:`field_specs`, :func:`build_message`, :func:`wrap`) are plain
  functions of explicit choices, so that hypothesis strategies and the
  ``random.Random`` loop of the long campaign draw the same inputs.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import construct as cs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from apdu.command import CommandApdu
from apdu.errors import MalformedApdu
from apdu.purse import (
    EXCEPTION_LOG_SLOTS,
    HISTORY_SLOTS,
    PIN_TRIES,
    PURSE_AID,
    BlocklistHeader,
    CardCertificate,
    ChangePinData,
    Credential,
    ExceptionEntry,
    HistoryKind,
    HistoryRecord,
    IssuerUpdate,
    LifeCycle,
    LockOrder,
    Message,
    OnlineRequest,
    PayData,
    PendingTransfer,
    PersonaliseData,
    Receipt,
    Tag,
    Transfer,
    TransferAskData,
    TransferOutData,
    TransferRole,
    UpdateAction,
    split_exception_log,
    valid_pin,
)
from apdu.purse_client import PurseClient
from apdu.signed import (
    SIGNATURE_LEN,
    ObjectKind,
    SignedObjectError,
    open_envelope,
    parse_envelope,
    private_key_from_scalar,
    public_key_from_bytes,
    verify_envelope,
)
from apdu.status import SW
from apdu.transport import CardChannel, LocalTransport
from card_os.card import Card
from card_os.purse import PurseApplet
from card_os.tear import TearHook
from issuer.signer import IssuerKey
from terminal.errors import TerminalError
from terminal.trust import check_certificate, check_receipt
from tests.purse_kit import (
    CARD_ID,
    CURRENCY,
    DAY,
    MAX_BALANCE,
    NONCE,
    PIN,
    T0,
    TERMINAL_ID,
    Policy,
    make_rig,
)

Cells = Mapping[str, bytes]
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
PREFIX = PURSE_AID.hex() + "/"  # the purse's cells in the card store
SELECT = bytes.fromhex("00A4040008") + PURSE_AID + b"\x00"
# the issuer key of the worked examples, so that their signed objects are genuine here
DOC_ISSUER = IssuerKey(
    private_key_from_scalar(hashlib.sha256(b"docs/protocol.md example issuer").digest())
)
OTHER_ISSUER = IssuerKey(
    private_key_from_scalar(hashlib.sha256(b"docs/protocol.md another issuer").digest())
)
PEER_ID = b"CARD0002"
USD_ID = b"CARD0003"  # a card in US dollars
RANDOM_SEED = 0x5EED  # the cards' random source (BEGIN ONLINE nonces) restarts here
POLICY = Policy()
EXPIRES = T0 + POLICY.lifetime
GENERATOR_POINT = bytes.fromhex(
    "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
    "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
)


# the card under test ------------------------------------------------------------------
class DetRandom:
    """The card's random source: deterministic, restarted on every restore."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._rng = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def reset(self) -> None:
        self._rng.seed(self._seed)


class CountingBackend:
    """Committed cells in memory, with a count of saves: no new save, no change."""

    def __init__(self, cells: Cells) -> None:
        self.cells: dict[str, bytes] = dict(cells)
        self.saves = 0

    def load(self) -> dict[str, bytes]:
        return dict(self.cells)

    def save(self, cells: Mapping[str, bytes], tear: TearHook) -> None:
        tear("memory:save")
        self.cells = dict(cells)
        self.saves += 1

    def restore(self, cells: Cells) -> None:
        self.cells = dict(cells)
        self.saves += 1


def card_on(cells: Cells, seed: int = RANDOM_SEED) -> tuple[Card, CountingBackend, DetRandom]:
    """A powered card with the purse installed, on a copy of ``cells``."""
    backend = CountingBackend(cells)
    rng = DetRandom(seed)
    card = Card(backend, random=rng)
    card.install(PURSE_AID, PurseApplet)
    card.power_on()
    return card, backend, rng


def _issue(issuer: IssuerKey, card_id: bytes, currency: int = CURRENCY) -> dict[str, bytes]:
    """Another card, personalised like CARD0001, renewed and loaded with 10000 at T0."""
    card, _backend, _rng = card_on({}, seed=len(card_id) + card_id[-1])
    client = PurseClient(CardChannel(LocalTransport(card)))
    client.select()
    public = client.personalise(
        PersonaliseData(card_id, currency, MAX_BALANCE, PIN, issuer.key_id, issuer.public)
    )
    client.store_certificate(issuer.certificate(card_id, public, T0 - DAY, T0 + 365 * DAY))
    request = OnlineRequest.decode(parse_envelope(client.begin_online()).body)
    credential = issuer.credential(_credential(card_id, 1, request.card_nonce, T0))
    actions = UpdateAction.RENEW | UpdateAction.LOAD
    client.issuer_update(
        issuer.update(
            card_id, request.card_nonce, T0, actions, load_amount=10_000, credential=credential
        )
    )
    return card.store.snapshot()


def _credential(card_id: bytes, serial: int, nonce: bytes, now: int, **changes: int) -> Credential:
    values = {
        "serial": serial,
        "issued_at": now,
        "expires_at": now + POLICY.lifetime,
        "offline_cap": POLICY.offline_cap,
        "per_payment_limit": POLICY.per_payment_limit,
        "no_pin_limit": POLICY.no_pin_limit,
        "tolerance": POLICY.tolerance,
    }
    values.update(changes)
    return Credential(card_id=card_id, card_nonce=nonce, **values)


# the store, decoded ------------------------------------------------------------------
def _int(cells: Cells, key: str) -> int:
    raw = cells.get(PREFIX + key)
    return int.from_bytes(raw, "big") if raw else 0


def _raw(cells: Cells, key: str) -> bytes:
    return cells.get(PREFIX + key) or b""


@dataclass(frozen=True)
class Image:
    """The purse's committed state, decoded from the store's cells."""

    state: int
    card_id: bytes
    currency: int
    max_balance: int
    balance: int
    atc: int
    time_mark: int
    offline_spent: int
    unlock_mark: int
    pin: bytes
    pin_tries: int
    credential_raw: bytes
    certificate: bytes
    pending_raw: bytes
    log_raw: bytes
    transfers_out: int
    transfers_in: int
    history_count: int

    @classmethod
    def of(cls, cells: Cells) -> Image:
        return cls(
            state=_int(cells, "state"),
            card_id=_raw(cells, "card_id"),
            currency=_int(cells, "currency"),
            max_balance=_int(cells, "max_balance"),
            balance=_int(cells, "balance"),
            atc=_int(cells, "atc"),
            time_mark=_int(cells, "time_mark"),
            offline_spent=_int(cells, "offline_spent"),
            unlock_mark=_int(cells, "unlock_mark"),
            pin=_raw(cells, "pin"),
            pin_tries=_int(cells, "pin_tries"),
            credential_raw=_raw(cells, "credential"),
            certificate=_raw(cells, "certificate"),
            pending_raw=_raw(cells, "xfer_pending"),
            log_raw=_raw(cells, "xfer_log"),
            transfers_out=_int(cells, "xfer_out"),
            transfers_in=_int(cells, "xfer_in"),
            history_count=_int(cells, "hist_count"),
        )

    @property
    def credential(self) -> Credential | None:
        if not self.credential_raw:
            return None
        return Credential.decode(parse_envelope(self.credential_raw).body)

    @property
    def pending(self) -> PendingTransfer | None:
        return PendingTransfer.decode(self.pending_raw) if self.pending_raw else None

    @property
    def log_entries(self) -> int:
        return len(split_exception_log(self.log_raw))

    def summary(self) -> str:
        try:
            state = LifeCycle(self.state).name
        except ValueError:
            state = f"state {self.state}"
        cred = self.credential
        return (
            f"{state}, balance {self.balance}, ATC {self.atc}, time mark {self.time_mark}, "
            f"offline spent {self.offline_spent}, PIN tries {self.pin_tries}, "
            f"credential serial {cred.serial if cred else 0}, unlock mark {self.unlock_mark}, "
            f"pending {'yes' if self.pending_raw else 'no'}, log {len(self.log_raw) // 31}, "
            f"history {self.history_count}"
        )


# the world: card image, second card, corpus ------------------------------------------------
@dataclass(frozen=True)
class Session:
    """APDUs sent in order to one card from the image: a real session or a doc example."""

    name: str
    apdus: tuple[bytes, ...]


@dataclass(frozen=True)
class World:
    image: Mapping[str, bytes]
    peer_image: Mapping[str, bytes]
    issuer_keys: Mapping[bytes, ec.EllipticCurvePublicKey]
    card_public: bytes
    certificate: bytes
    peer_public: bytes
    peer_certificate: bytes
    credential: bytes
    nonces: tuple[bytes, ...]  # what BEGIN ONLINE gives, in order, after a restore
    requests: tuple[bytes, ...]  # genuine TRANSFER_REQUESTs to this card (CARD0002, 0003)
    transfer_body: bytes
    sessions: tuple[Session, ...]
    corpus: tuple[bytes, ...]  # every APDU of the sessions, once


class Recorder:
    """A copy of the card from the image; every raw APDU sent to it is kept."""

    def __init__(self, cells: Cells) -> None:
        self.card, _backend, _rng = card_on(cells)
        self.apdus: list[bytes] = []
        self.client = PurseClient(CardChannel(LocalTransport(self.card), trace=self._trace))
        self.client.select()

    def _trace(self, raw: bytes, answer: bytes) -> None:
        self.apdus.append(raw)

    def raw(self, apdu: bytes | str, expect: int) -> bytes:
        """Send raw bytes; the status word must be ``expect`` (the recording is checked)."""
        command = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu
        answer = self.card.process(command)
        self.apdus.append(command)
        sw = int.from_bytes(answer[-2:], "big")
        if sw != expect and not (expect == 0x6100 and answer[-2] == 0x61):
            raise AssertionError(f"recording: {command.hex()} answered {sw:04X}, not {expect:04X}")
        return answer[:-2]

    def begin(self) -> bytes:
        return OnlineRequest.decode(parse_envelope(self.client.begin_online()).body).card_nonce

    def session(self, name: str) -> Session:
        return Session(name, tuple(self.apdus))


def _apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", ne: int | None = None) -> bytes:
    return CommandApdu(cla, ins, p1, p2, data, ne).to_bytes()


def doc_sessions() -> list[Session]:
    """Every ``apdu`` block of docs/protocol.md: its ``>`` commands, in order."""
    sessions: list[Session] = []
    heading = "protocol.md"
    block: list[str] | None = None
    marker = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if block is None:
            if line.strip() == "```apdu":
                block, marker = [], ""
            elif found := re.match(r"#{1,6}\s+(.*)", line):
                heading = found.group(1).strip()
            continue
        if line.strip() == "```":
            sessions.append(Session(f"doc: {heading}", tuple(bytes.fromhex(c) for c in block)))
            block = None
        elif line.startswith((">", "<")):
            marker = line[0]
            if marker == ">":
                block.append("".join(line[1:].split()))
        elif line[:1].isspace() and marker == ">":
            block[-1] += "".join(line.split())
    return sessions


def _record_sessions(
    image: Cells, peer_image: Cells, usd_image: Cells, issuer: IssuerKey
) -> tuple[list[Session], tuple[bytes, ...], bytes, tuple[bytes, ...]]:
    """Real sessions on copies of the card (and of CARD0002), recorded APDU by APDU."""
    sessions: list[Session] = []
    ok = SW.OK

    def update(nonce: bytes, now: int, actions: int, **kw: Any) -> bytes:
        return issuer.update(CARD_ID, nonce, now, UpdateAction(actions), **kw)

    # reading everything, PIN, history
    rec = Recorder(image)
    rec.raw(_apdu(0x00, 0xA4, 0x04, 0x0C, PURSE_AID), ok)
    rec.raw(_apdu(0x00, 0xA4, 0x04, 0x00, PURSE_AID[:6]), 0x6100)
    rec.raw("00C0000010", 0x6100)
    rec.raw("00C0000000", ok)
    rec.raw(_apdu(0x00, 0xA4, 0x04, 0x00, PURSE_AID, 5), 0x6C21)
    for tag in Tag:
        rec.client.get_data(tag)
    rec.raw("00CADF03", 0x6100)
    rec.raw("00C0000007", ok)
    rec.raw("00CADF0302", 0x6C07)
    rec.raw("00200080", SW.tries_left(PIN_TRIES))
    rec.client.verify_pin(PIN)
    rec.raw("00200080", ok)
    rec.client.read_record(1)
    rec.client.read_record(2)
    rec.raw("00B2030400", SW.RECORD_NOT_FOUND)
    rec.client.change_pin(PIN, b"5678")
    rec.client.change_pin(b"5678", PIN)
    rec.raw(_apdu(0x00, 0x20, 0x00, 0x80, b"0000"), SW.tries_left(2))
    rec.client.verify_pin(PIN)
    sessions.append(rec.session("read"))

    # payments
    rec = Recorder(image)
    rec.client.pay(PayData(500, T0 + 3600, TERMINAL_ID, NONCE))
    rec.raw(
        _apdu(0x80, 0x54, 0, 0, PayData(1500, T0 + 3700, TERMINAL_ID, NONCE).encode(), 256), 0x6982
    )
    rec.client.verify_pin(PIN)
    rec.client.pay(PayData(1500, T0 + 3700, TERMINAL_ID, NONCE))
    rec.raw(
        _apdu(0x80, 0x54, 0, 0, PayData(20, T0 + 3800, TERMINAL_ID, NONCE).encode(), 16), 0x6100
    )
    rec.raw("00C0000000", ok)
    rec.raw(_apdu(0x80, 0x54, 0, 0, PayData(20, EXPIRES, TERMINAL_ID, NONCE).encode(), 256), 0x9C02)
    rec.raw(_apdu(0x80, 0x54, 0, 0, PayData(20, T0, TERMINAL_ID, NONCE).encode(), 256), 0x9C03)
    rec.raw(_apdu(0x80, 0x54, 0, 0, PayData(5001, T0 + 3800, TERMINAL_ID, NONCE).encode()), 0x9C05)
    sessions.append(rec.session("pay"))

    # online sessions: a load, then a renewal with a load
    rec = Recorder(image)
    n1 = rec.begin()
    rec.client.issuer_update(update(n1, T0 + 60, UpdateAction.LOAD, load_amount=100))
    n2 = rec.begin()
    cred2 = issuer.credential(_credential(CARD_ID, 2, n2, T0 + 120))
    renew_load = UpdateAction.RENEW | UpdateAction.LOAD
    update2 = update(n2, T0 + 120, renew_load, load_amount=50, credential=cred2)
    rec.raw(_apdu(0x80, 0x52, 0, 0, update2), 0x6104)  # no Le: the new ATC waits
    rec.raw("00C0000004", ok)
    rec.client.pay(PayData(10, T0 + 130, TERMINAL_ID, NONCE))
    n3 = rec.begin()
    sessions.append(rec.session("online"))
    nonces = (n1, n2, n3)

    # a real lock order, then unlocked online
    rec = Recorder(image)
    rec.client.lock(issuer.lock_order(CARD_ID, T0 + 3600, reason=1, list_version=1))
    rec.raw(
        _apdu(0x80, 0x54, 0, 0, PayData(5, T0 + 3700, TERMINAL_ID, NONCE).encode(), 256), 0x9C07
    )
    rec.client.lock(issuer.lock_order(CARD_ID, T0 + 3600, reason=1, list_version=1))
    assert rec.begin() == n1
    rec.client.issuer_update(update(n1, T0 + 7200, UpdateAction.UNLOCK))
    rec.raw(_apdu(0x80, 0x1E, 0, 0, issuer.lock_order(CARD_ID, T0 + 3600)), SW.STALE_OBJECT)
    rec.client.pay(PayData(100, T0 + 7300, TERMINAL_ID, NONCE))
    sessions.append(rec.session("lock"))

    # terminated for good
    rec = Recorder(image)
    assert rec.begin() == n1
    rec.client.issuer_update(update(n1, T0 + 60, UpdateAction.TERMINATE))
    rec.raw("00CADF0200", ok)
    rec.raw(_apdu(0x80, 0x54, 0, 0, PayData(5, T0 + 70, TERMINAL_ID, NONCE).encode(), 256), 0x9C08)
    rec.raw(_apdu(0x00, 0x20, 0x00, 0x80, PIN), SW.CARD_NOT_ACTIVE)
    sessions.append(rec.session("terminate"))

    # a blocked PIN, unblocked online
    rec = Recorder(image)
    for left in (2, 1, 0):
        rec.raw(_apdu(0x00, 0x20, 0x00, 0x80, b"9999"), SW.tries_left(left))
    rec.raw(_apdu(0x00, 0x20, 0x00, 0x80, PIN), SW.AUTH_METHOD_BLOCKED)
    rec.raw(_apdu(0x00, 0x24, 0x00, 0x80, b"\x041234\x045678"), SW.AUTH_METHOD_BLOCKED)
    assert rec.begin() == n1
    rec.client.issuer_update(update(n1, T0 + 60, UpdateAction.UNBLOCK_PIN))
    rec.client.verify_pin(PIN)
    sessions.append(rec.session("unblock"))

    # genuine issuer objects that the card must refuse deep in their checks
    rec = Recorder(image)
    assert rec.begin() == n1
    refused: list[tuple[bytes, int]] = [
        (update(n1, T0 + 60, UpdateAction.LOAD, load_amount=95_000), SW.OVER_MAX_BALANCE),
        (update(n1, T0 + 60, 0x40), SW.WRONG_DATA),
        (update(n1, T0 + 60, UpdateAction.LOAD, load_amount=0), SW.WRONG_DATA),
        (update(n1, T0 + 60, UpdateAction.UNLOCK, load_amount=5), SW.WRONG_DATA),
        (update(n1, T0 + 60, UpdateAction.UNLOCK, log_cleared=1), SW.WRONG_DATA),
        (update(n1, T0 + 60, UpdateAction.RESTORE), SW.WRONG_DATA),
        (
            update(
                n1,
                T0 + 60,
                UpdateAction.RENEW,
                credential=issuer.credential(_credential(CARD_ID, 1, n1, T0 + 60)),
            ),
            SW.STALE_OBJECT,
        ),
        (
            update(
                n1,
                T0 + 60,
                UpdateAction.RENEW,
                credential=issuer.credential(_credential(CARD_ID, 5, n2, T0 + 60)),
            ),
            SW.STALE_SESSION,
        ),
        (
            update(
                n1,
                T0 + 60,
                UpdateAction.RENEW,
                credential=issuer.credential(
                    _credential(CARD_ID, 5, n1, T0 + 60, expires_at=T0 + 60)
                ),
            ),
            SW.WRONG_DATA,
        ),
        (issuer.update(PEER_ID, n1, T0 + 60, UpdateAction.LOAD, load_amount=1), SW.WRONG_CARD),
        (update(n2, T0 + 60, UpdateAction.LOAD, load_amount=1), SW.STALE_SESSION),
        (
            OTHER_ISSUER.update(CARD_ID, n1, T0 + 60, UpdateAction.LOAD, load_amount=1),
            SW.UNKNOWN_KEY,
        ),
        (issuer.credential(_credential(CARD_ID, 9, n1, T0 + 60)), SW.WRONG_OBJECT_KIND),
    ]
    for envelope, sw in refused:
        rec.raw(_apdu(0x80, 0x52, 0, 0, envelope, 256), sw)
    rec.raw(_apdu(0x80, 0x1E, 0, 0, issuer.lock_order(PEER_ID, T0 + 60)), SW.WRONG_CARD)
    rec.raw(_apdu(0x80, 0x1E, 0, 0, OTHER_ISSUER.lock_order(CARD_ID, T0 + 60)), SW.UNKNOWN_KEY)
    restore = UpdateAction.LOAD | UpdateAction.RESTORE
    rec.client.issuer_update(update(n1, T0 + 60, restore, load_amount=1, restore_amount=2))
    sessions.append(rec.session("deep refusals"))

    # card to card: this card as payee, then as payer, with real messages of CARD0002
    peer_cert, own_cert = _raw(peer_image, "certificate"), _raw(image, "certificate")
    rec = Recorder(image)
    peer = Recorder(peer_image)
    request = rec.client.transfer_ask(700, _int(peer_image, "atc") + 1, peer_cert)
    value = peer.client.transfer_out(T0 + 3600, own_cert, request)
    own_ack = rec.client.transfer_receive(value)
    peer.client.transfer_ack(own_ack)
    sessions.append(rec.session("payee"))
    sessions.append(peer.session("peer as payer (sent to CARD0002)"))

    # as payer, twice; acknowledgements of the other transfer, or signed by this card
    rec = Recorder(image)
    peer = Recorder(peer_image)
    request = peer.client.transfer_ask(300, _int(image, "atc") + 1, own_cert)
    value = rec.client.transfer_out(T0 + 3600, peer_cert, request)
    ack = peer.client.transfer_receive(value)
    rec.client.transfer_ack(ack)
    rec.raw(_apdu(0x80, 0x5A, 0, 0, ack), SW.NO_TRANSFER_PENDING)
    second = peer.client.transfer_ask(301, _int(rec.card.store.snapshot(), "atc") + 1, own_cert)
    value = rec.client.transfer_out(T0 + 3700, peer_cert, second)
    rec.raw(_apdu(0x80, 0x5A, 0, 0, ack), SW.WRONG_SEQUENCE)
    rec.raw(_apdu(0x80, 0x5A, 0, 0, own_ack), SW.WRONG_CARD)
    rec.client.transfer_ack(peer.client.transfer_receive(value))
    sessions.append(rec.session("payer"))
    sessions.append(peer.session("peer as payee (sent to CARD0002)"))
    transfer_body = parse_envelope(request).body

    # TRANSFER OUT refused at each spending check, with real requests
    rec = Recorder(image)
    peer = Recorder(peer_image)
    usd = Recorder(usd_image)
    seq = _int(image, "atc") + 1
    requests = {
        amount: peer.client.transfer_ask(amount, seq, own_cert) for amount in (300, 1001, 5001)
    }
    late = peer.client.transfer_ask(300, seq + 1, own_cert)
    dollars = usd.client.transfer_ask(300, seq, own_cert)
    usd_cert = _raw(usd_image, "certificate")

    def out(when: int, certificate: bytes, req: bytes, sw: int) -> None:
        data = TransferOutData(when, certificate, req).encode()
        rec.raw(_apdu(0x80, 0x56, 0, 0, data, 256), sw)

    out(T0 + 3600, peer_cert, requests[5001], SW.OVER_PAYMENT_LIMIT)
    out(T0 + 3600, peer_cert, requests[1001], SW.SECURITY_STATUS_NOT_SATISFIED)
    out(T0 - 1000, peer_cert, requests[300], SW.CLOCK_ROLLBACK)
    out(EXPIRES, peer_cert, requests[300], SW.CREDENTIAL_EXPIRED)
    out(T0 + 3600, usd_cert, dollars, SW.CURRENCY_MISMATCH)
    out(T0 + 3600, peer_cert, late, SW.WRONG_SEQUENCE)
    out(T0 + 3600, usd_cert, requests[300], SW.WRONG_CARD)
    rec.client.verify_pin(PIN)
    out(T0 + 3600, peer_cert, requests[1001], SW.OK)
    sessions.append(rec.session("payer refusals"))

    # spent down to 500: a request for 1001 is more than the balance
    rec = Recorder(image)
    peer = Recorder(peer_image)
    for amount in (5000, 4500):
        rec.client.verify_pin(PIN)
        rec.client.pay(PayData(amount, T0 + 3600, TERMINAL_ID, NONCE))
    poor = peer.client.transfer_ask(1001, _int(rec.card.store.snapshot(), "atc") + 1, own_cert)
    rec.client.verify_pin(PIN)
    out(T0 + 3600, peer_cert, poor, SW.INSUFFICIENT_FUNDS)
    sessions.append(rec.session("payer, balance too low"))

    # loaded with 60000 online, then the offline cap of 20000 is spent
    rec = Recorder(image)
    peer = Recorder(peer_image)
    assert rec.begin() == n1
    rec.client.issuer_update(update(n1, T0 + 60, UpdateAction.LOAD, load_amount=60_000))
    for _ in range(4):
        rec.client.verify_pin(PIN)
        rec.client.pay(PayData(5000, T0 + 3600, TERMINAL_ID, NONCE))
    rec.raw(_apdu(0x80, 0x54, 0, 0, PayData(1, T0 + 3600, TERMINAL_ID, NONCE).encode()), 0x9C06)
    capped = peer.client.transfer_ask(300, _int(rec.card.store.snapshot(), "atc") + 1, own_cert)
    out(T0 + 3600, peer_cert, capped, SW.OFFLINE_CAP_EXCEEDED)
    sessions.append(rec.session("offline cap"))

    # the exception log fills up: 8 asks, each aborting the one before; the 9th is refused
    rec = Recorder(image)
    peer = Recorder(peer_image)
    for _ in range(EXCEPTION_LOG_SLOTS):
        rec.client.transfer_ask(100, 1, peer_cert)
    ask = TransferAskData(100, 1, peer_cert).encode()
    rec.raw(_apdu(0x80, 0x58, 0, 0, ask, 256), SW.EXCEPTION_LOG_FULL)
    full = peer.client.transfer_ask(100, _int(rec.card.store.snapshot(), "atc") + 1, own_cert)
    out_data = TransferOutData(T0 + 3600, peer_cert, full).encode()
    rec.raw(_apdu(0x80, 0x56, 0, 0, out_data, 256), SW.EXCEPTION_LOG_FULL)
    sessions.append(rec.session("exception log full"))

    # a transfer aborted by BEGIN ONLINE, its log entry cleared by the issuer
    rec = Recorder(image)
    rec.client.transfer_ask(200, _int(peer_image, "atc") + 1, peer_cert)
    assert rec.begin() == n1
    rec.client.issuer_update(update(n1, T0 + 60, UpdateAction.LOAD, load_amount=10, log_cleared=1))
    sessions.append(rec.session("aborted transfer"))
    all_requests = (request, *requests.values(), late, dollars, poor, capped)
    return sessions, all_requests, transfer_body, nonces


@functools.cache
def world() -> World:
    """The card image, the second card and the corpus (built once per process)."""
    rig = make_rig(issuer=DOC_ISSUER)
    rig.renew(T0, load=10_000)
    image = rig.snapshot()
    peer_image = _issue(DOC_ISSUER, PEER_ID)
    usd_image = _issue(DOC_ISSUER, USD_ID, currency=840)
    recorded, requests, body, nonces = _record_sessions(image, peer_image, usd_image, DOC_ISSUER)
    sessions = tuple(recorded + doc_sessions())
    corpus = tuple(dict.fromkeys(apdu for s in sessions for apdu in s.apdus))
    return World(
        image=image,
        peer_image=peer_image,
        issuer_keys={DOC_ISSUER.key_id: DOC_ISSUER.private.public_key()},
        card_public=rig.card_public,
        certificate=_raw(image, "certificate"),
        peer_public=CardCertificate.decode(
            parse_envelope(_raw(peer_image, "certificate")).body
        ).public_key,
        peer_certificate=_raw(peer_image, "certificate"),
        credential=_raw(image, "credential"),
        nonces=nonces,
        requests=requests,
        transfer_body=body,
        sessions=sessions,
        corpus=corpus,
    )


# the oracle ------------------------------------------------------------------------
@dataclass(frozen=True)
class Violation:
    """One oracle that failed on one exchange."""

    oracle: str
    detail: str

    def __str__(self) -> str:
        return f"{self.oracle}: {self.detail}"


_SUCCESS = frozenset((0x9000, 0x6100))
_ENVELOPE = frozenset((0x6A80, 0x9C14, 0x9C11, 0x9C10))
_SPEND = frozenset((0x9C01, 0x9C03, 0x9C02, 0x6A80, 0x9C05, 0x6982, 0x9C04, 0x9C06))


@dataclass(frozen=True)
class CommandSpec:
    name: str
    cla: int
    p1p2: tuple[tuple[int, int], ...]  # the documented ones
    sws: frozenset[int]  # documented answers (families 6100, 6C00, 63C0)


_TAG_P1P2 = tuple((tag >> 8, tag & 0xFF) for tag in Tag)
# Every command of docs/protocol.md with the status words its section lists.
COMMANDS: dict[int, CommandSpec] = {
    0xA4: CommandSpec(
        "SELECT",
        0x00,
        ((4, 0), (4, 0x0C)),
        frozenset((0x9000, 0x6100, 0x6C00, 0x6A86, 0x6700, 0x6A82)),
    ),
    0xC0: CommandSpec(
        "GET RESPONSE", 0x00, ((0, 0),), frozenset((0x9000, 0x6100, 0x6A86, 0x6700, 0x6985))
    ),
    0xCA: CommandSpec(
        "GET DATA", 0x00, _TAG_P1P2, frozenset((0x9000, 0x6100, 0x6C00, 0x6700, 0x6A88))
    ),
    0x20: CommandSpec(
        "VERIFY", 0x00, ((0, 0x80),), frozenset((0x9000, 0x6A86, 0x9C08, 0x63C0, 0x6983, 0x6A80))
    ),
    0x24: CommandSpec(
        "CHANGE PIN",
        0x00,
        ((0, 0x80),),
        frozenset((0x9000, 0x6A86, 0x9C08, 0x6A80, 0x6983, 0x63C0)),
    ),
    0xB2: CommandSpec(
        "READ RECORD",
        0x00,
        ((1, 4), (2, 4), (3, 4), (10, 4), (11, 4), (0, 4)),
        frozenset((0x9000, 0x6100, 0x6C00, 0x6A86, 0x6700, 0x9C08, 0x6982, 0x6A83)),
    ),
    0xE2: CommandSpec(
        "PERSONALISE",
        0x80,
        ((0, 0), (0x80, 0)),
        frozenset((0x9000, 0x6100, 0x6A86, 0x6985, 0x9C12)) | _ENVELOPE,
    ),
    0x50: CommandSpec(
        "BEGIN ONLINE", 0x80, ((0, 0),), frozenset((0x9000, 0x6100, 0x6A86, 0x6700, 0x9C08))
    ),
    0x52: CommandSpec(
        "ISSUER UPDATE",
        0x80,
        ((0, 0),),
        frozenset((0x9000, 0x6100, 0x6A86, 0x9C08, 0x9C07, 0x9C12, 0x9C13, 0x9C16, 0x9C15))
        | _ENVELOPE,
    ),
    0x54: CommandSpec(
        "PAY", 0x80, ((0, 0),), frozenset((0x9000, 0x6100, 0x6A86, 0x6700, 0x9C07, 0x9C08)) | _SPEND
    ),
    0x1E: CommandSpec(
        "LOCK", 0x80, ((0, 0),), frozenset((0x9000, 0x6A86, 0x9C08, 0x9C12, 0x9C16)) | _ENVELOPE
    ),
    0x56: CommandSpec(
        "TRANSFER OUT",
        0x80,
        ((0, 0),),
        frozenset((0x9000, 0x6100, 0x6A86, 0x9C07, 0x9C08, 0x9C12, 0x9C0A, 0x9C17, 0x9C09))
        | _ENVELOPE
        | _SPEND,
    ),
    0x58: CommandSpec(
        "TRANSFER IN",
        0x80,
        ((0, 0), (1, 0)),
        frozenset((0x9000, 0x6100, 0x6A86, 0x9C07, 0x9C08, 0x9C15, 0x9C09, 0x9C18, 0x9C12, 0x9C17))
        | _ENVELOPE,
    ),
    0x5A: CommandSpec(
        "TRANSFER ACK",
        0x80,
        ((0, 0),),
        frozenset((0x9000, 0x6A86, 0x9C18, 0x6A80, 0x9C14, 0x9C12, 0x9C10, 0x9C17)),
    ),
}
PURSE_INS = tuple(ins for ins in COMMANDS if ins not in (0xA4, 0xC0))


def sw_family(sw: int) -> int:
    """``61XX`` and ``6CXX`` as ``6100`` / ``6C00``, ``63CX`` as ``63C0``; others as they are."""
    if sw >> 8 in (0x61, 0x6C):
        return sw & 0xFF00
    if sw & 0xFFF0 == 0x63C0:
        return 0x63C0
    return sw


def _expected_sws(cmd: CommandApdu, selected: bool) -> frozenset[int] | None:
    """What the runtime rules allow for this command (None: the applet's documented set)."""
    if cmd.cla == 0x00 and cmd.ins == 0xC0:
        return COMMANDS[0xC0].sws
    if cmd.cla not in (0x00, 0x80):
        return frozenset((0x6E00,))
    if cmd.cla == 0x00 and cmd.ins == 0xA4:
        return COMMANDS[0xA4].sws
    if not selected:
        return frozenset((0x6D00,))
    spec = COMMANDS.get(cmd.ins)
    if spec is None or cmd.ins in (0xA4, 0xC0):
        return frozenset((0x6D00,))
    if spec.cla != cmd.cla:
        return frozenset((0x6E00,))
    return None


@dataclass
class Transient:
    """The harness's shadow of the purse's transient session, kept from the answers.

    The PIN flag is set by a right PIN in VERIFY or CHANGE PIN, cleared by a wrong
    one, by a SELECT that reached the purse and by the payment that needed it. The
    session nonce is the next draw of the card's (deterministic) random source at
    each BEGIN ONLINE, gone with a SELECT or the ISSUER UPDATE that used it.
    """

    pin_verified: bool = False
    nonce: bytes | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(RANDOM_SEED))
    waiting: int | None = 0  # bytes left for GET RESPONSE (None: 256 or more)

    def restart(self) -> None:
        """The card was restored: its random source starts again too."""
        self.pin_verified = False
        self.nonce = None
        self.rng.seed(RANDOM_SEED)
        self.waiting = 0

    def chain(self, cmd: CommandApdu | None, sw: int, data: bytes) -> str:
        """Check a GET RESPONSE against the bytes a ``61XX`` left waiting; keep count."""
        problem = ""
        if (
            cmd is not None
            and (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == (0x00, 0xC0, 0, 0)
            and not cmd.data
        ):
            waiting, ne = self.waiting, cmd.ne or 256
            if waiting == 0 and (sw, data) != (0x6985, b""):
                problem = f"GET RESPONSE with nothing waiting answered {sw:04X}"
            elif waiting is None and len(data) < min(ne, 256):
                problem = f"{len(data)} bytes of the 256 or more waiting, for Ne {ne}"
            elif waiting:
                rest = waiting - min(ne, waiting)
                expected = SW.bytes_remaining(rest) if rest else 0x9000
                if (len(data), sw) != (min(ne, waiting), expected):
                    problem = (
                        f"{len(data)} bytes and {sw:04X} for {waiting} waiting and Ne {ne}, "
                        f"not {min(ne, waiting)} and {expected:04X}"
                    )
        self.waiting = (sw & 0xFF or None) if sw >> 8 == 0x61 else 0
        return problem

    def advance(self, cmd: CommandApdu, family: int, before: Cells) -> None:
        """What this answer did to the transient session."""
        ok = family in _SUCCESS
        if cmd.cla == 0x00 and cmd.ins == 0xA4:
            if ok or family == 0x6C00:  # selected (also when the FCI did not fit Le)
                self.pin_verified, self.nonce = False, None
        elif cmd.cla == 0x00 and cmd.ins in (0x20, 0x24) and cmd.data:
            if family == 0x9000:
                self.pin_verified = True
            elif family == 0x63C0:
                self.pin_verified = False
        elif cmd.cla != 0x80 or not ok:
            return
        elif cmd.ins == 0x50:
            self.nonce = self.rng.randbytes(16)
        elif cmd.ins == 0x52:
            self.nonce = None
        elif cmd.ins in (0x54, 0x56) and _needs_pin(cmd, before):
            self.pin_verified = False


def _spent_amount(cmd: CommandApdu) -> int:
    """The amount a PAY or TRANSFER OUT spends (0 if its data does not say)."""
    try:
        if cmd.ins == 0x54:
            return PayData.decode(cmd.data).amount
        out = TransferOutData.decode(cmd.data)
        return Transfer.decode(parse_envelope(out.request).body).amount
    except SignedObjectError:
        return 0


def _needs_pin(cmd: CommandApdu, before: Cells) -> bool:
    cred = Image.of(before).credential
    return cred is not None and _spent_amount(cmd) > cred.no_pin_limit


def check_exchange(
    w: World,
    selected: bool,
    before: Cells,
    after: Cells,
    raw: bytes,
    answer: bytes,
    transient: Transient | None = None,
) -> list[Violation]:
    """Every oracle on one exchange; ``after is before`` means nothing was saved.

    ``transient`` (the shadow of the card's session) is checked and then advanced.
    """
    if len(answer) < 2:
        return [Violation("response", f"{len(answer)} bytes, no status word")]
    session = transient if transient is not None else Transient()
    sw = int.from_bytes(answer[-2:], "big")
    try:
        cmd: CommandApdu | None = CommandApdu.parse(raw)
    except MalformedApdu:
        cmd = None
    out = _check_exchange(w, selected, before, after, cmd, sw, answer, session)
    problem = session.chain(cmd, sw, answer[:-2])
    if problem:
        out.append(Violation("response chaining", problem))
    if cmd is not None:
        session.advance(cmd, sw_family(sw), before)
    return out


def _check_exchange(
    w: World,
    selected: bool,
    before: Cells,
    after: Cells,
    cmd: CommandApdu | None,
    sw: int,
    answer: bytes,
    session: Transient,
) -> list[Violation]:
    family = sw_family(sw)
    unchanged = after is before or after == before
    if cmd is None:
        out = [] if sw == 0x6700 else [Violation("status word", f"{sw:04X} to malformed bytes")]
        if not unchanged:
            out.append(
                Violation("state unchanged", "a malformed APDU changed " + _diff(before, after))
            )
        return out
    out = _check_answer(cmd, selected, sw, family, answer)
    if family not in _SUCCESS:
        if not unchanged:
            out += _refusal_change(cmd, sw, before, after)
        return out
    if cmd.cla == 0x00 and cmd.ins in (0xA4, 0xC0, 0xCA, 0xB2):
        if not unchanged:
            out.append(Violation("state unchanged", f"{_name(cmd)} changed {_diff(before, after)}"))
        why = _read_only_refusal(cmd, session)
        if why:
            out.append(Violation("accepted", f"{_name(cmd)} answered {sw:04X}: {why}"))
        return out
    out += _success(w, cmd, before, after, answer, session)
    return out


def _read_only_refusal(cmd: CommandApdu, session: Transient) -> str:
    """Why a successful SELECT, GET RESPONSE, GET DATA or READ RECORD should have been refused."""
    if cmd.ins == 0xA4:
        if (cmd.p1, cmd.p2) not in COMMANDS[0xA4].p1p2:
            return "SELECT with other P1 P2"
        if not (5 <= len(cmd.data) <= 16 and PURSE_AID.startswith(cmd.data)):
            return "SELECT of an AID that is not the purse's"
    elif cmd.data:
        return "a data field where none is allowed"
    elif cmd.ins == 0xC0 and (cmd.p1 or cmd.p2):
        return "GET RESPONSE with P1 P2"
    elif cmd.ins == 0xB2 and cmd.p2 != 0x04:
        return "READ RECORD with P2 other than 04"
    elif cmd.ins == 0xB2 and not session.pin_verified:
        return "the history without the PIN"
    return ""


def _name(cmd: CommandApdu) -> str:
    spec = COMMANDS.get(cmd.ins)
    return f"{spec.name if spec else 'INS'} {cmd.cla:02X} {cmd.ins:02X} {cmd.p1:02X} {cmd.p2:02X}"


def _diff(before: Cells, after: Cells) -> str:
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return ", ".join(k.removeprefix(PREFIX) for k in keys) or "nothing"


def _check_answer(
    cmd: CommandApdu, selected: bool, sw: int, family: int, answer: bytes
) -> list[Violation]:
    out: list[Violation] = []
    if sw == SW.UNKNOWN_ERROR:
        out.append(Violation("6F00", f"unexpected error in card code on {_name(cmd)}"))
    allowed = _expected_sws(cmd, selected)
    if allowed is None:
        allowed = COMMANDS[cmd.ins].sws
    if family not in allowed and sw != SW.UNKNOWN_ERROR:
        out.append(Violation("status word", f"{sw:04X} is not documented for {_name(cmd)}"))
    if family == 0x63C0 and sw & 0x0F > PIN_TRIES:
        out.append(Violation("status word", f"{sw:04X}: more tries than {PIN_TRIES}"))
    data = answer[:-2]
    if family not in _SUCCESS and data:
        out.append(Violation("response", f"{sw:04X} with {len(data)} data bytes"))
    is_get_response = cmd.cla == 0x00 and cmd.ins == 0xC0
    ne = cmd.ne if cmd.ne is not None or not is_get_response else 256
    if data and ne is None:
        out.append(Violation("response", f"{len(data)} data bytes to a command without Le"))
    if ne is not None and len(data) > ne:
        out.append(Violation("response", f"{len(data)} data bytes for Ne {ne}"))
    if family == 0x6C00 and (cmd.ne is None or cmd.extended):
        out.append(Violation("response", f"{sw:04X} to a command without a short Le"))
    if family == 0x6100 and not is_get_response and ne is not None and len(data) != ne:
        out.append(Violation("response", f"{sw:04X} with {len(data)} bytes, not the first {ne}"))
    return out


def _refusal_change(cmd: CommandApdu, sw: int, before: Cells, after: Cells) -> list[Violation]:
    """A refusal changed the store: only a wrong PIN may, and only by one try."""
    if sw_family(sw) == 0x63C0 and cmd.cla == 0x00 and cmd.ins in (0x20, 0x24):
        tries = _int(before, "pin_tries")
        expected = dict(before)
        expected[PREFIX + "pin_tries"] = (tries - 1).to_bytes(1, "big")
        problems = []
        if dict(after) != expected:
            problems.append(f"changed {_diff(before, after)} (expected one try less)")
        if tries - 1 != sw & 0x0F:
            problems.append(f"{sw:04X} but {tries - 1} tries left")
        offered = cmd.data
        if cmd.ins == 0x24:
            try:
                offered = ChangePinData.decode(cmd.data).old
            except SignedObjectError:
                offered = b""
        if offered == _raw(before, "pin"):
            problems.append("the right PIN was refused")
        return [Violation("PIN try", "; ".join(problems))] if problems else []
    return [
        Violation("state unchanged", f"{sw:04X} from {_name(cmd)} changed {_diff(before, after)}")
    ]


class _Refuse(Exception):
    """The model says the card should have refused this command."""


class _Model:
    """The card's cells after a command, as docs/protocol.md says they must be."""

    def __init__(self, before: Cells, w: World, session: Transient) -> None:
        self.cells = dict(before)
        self.img = Image.of(before)
        self.w = w
        self.session = session

    def get(self, key: str) -> int:
        return _int(self.cells, key)

    def put(self, key: str, value: int, size: int = 4) -> None:
        self.cells[PREFIX + key] = value.to_bytes(size, "big")

    def put_raw(self, key: str, value: bytes) -> None:
        self.cells[PREFIX + key] = value

    def next_atc(self) -> int:
        atc = self.get("atc") + 1
        self.put("atc", atc)
        return atc

    def record(self, atc: int, kind: HistoryKind, amount: int, time: int, other: bytes) -> None:
        count = self.get("hist_count")
        entry = HistoryRecord(atc, kind, amount, self.get("balance"), time, other)
        self.put_raw(f"hist{count % HISTORY_SLOTS}", entry.encode())
        self.put("hist_count", count + 1)

    def abort_transfer(self) -> None:
        pending = _raw(self.cells, "xfer_pending")
        if pending:
            p = PendingTransfer.decode(pending)
            log = _raw(self.cells, "xfer_log") + ExceptionEntry(p.role, p.transfer).encode()
            self.put_raw("xfer_log", log)
            self.put_raw("xfer_pending", b"")

    def require(self, condition: bool, why: str) -> None:
        if not condition:
            raise _Refuse(why)

    def require_state(self, *states: LifeCycle) -> None:
        self.require(self.img.state in states, f"accepted in state {self.img.state}")

    def issuer_object(self, raw: bytes, kind: ObjectKind) -> bytes:
        try:
            return open_envelope(raw, kind, dict(self.w.issuer_keys)).body
        except SignedObjectError as err:
            raise _Refuse(f"accepted a {kind.name} that does not verify ({err})") from None

    def card_object(self, raw: bytes, kind: ObjectKind, signer: bytes, public: bytes) -> bytes:
        try:
            env = parse_envelope(raw)
            self.require(env.kind == kind and env.key_id == signer, f"not a {kind.name}")
            verify_envelope(env, public_key_from_bytes(public))
        except SignedObjectError as err:
            raise _Refuse(f"accepted a {kind.name} that does not verify ({err})") from None
        return env.body

    def spend(self, amount: int, terminal_time: int) -> None:
        """PAY's checks, and its debit (PAY and TRANSFER OUT)."""
        cred = self.img.credential
        self.require(cred is not None, "paid without a credential")
        assert cred is not None
        self.require(terminal_time + cred.tolerance >= self.img.time_mark, "clock behind the mark")
        self.require(terminal_time < cred.expires_at, "paid with an expired credential")
        self.require(0 < amount <= cred.per_payment_limit, "amount 0 or over the limit")
        needs_pin = amount > cred.no_pin_limit
        self.require(not needs_pin or self.session.pin_verified, "over the no-PIN limit, no PIN")
        self.require(amount <= self.img.balance, "paid more than the balance")
        self.require(self.img.offline_spent + amount <= cred.offline_cap, "over the offline cap")
        self.put("balance", self.get("balance") - amount)
        self.put("offline_spent", self.get("offline_spent") + amount)
        if terminal_time > self.get("time_mark"):
            self.put("time_mark", terminal_time)

    def room_to_start(self) -> None:
        used = self.img.log_entries + (self.img.pending_raw != b"")
        self.require(used + 1 <= EXCEPTION_LOG_SLOTS, "no room in the exception log")


def _success(
    w: World, cmd: CommandApdu, before: Cells, after: Cells, answer: bytes, session: Transient
) -> list[Violation]:
    model = _Model(before, w, session)
    try:
        _apply(model, cmd, answer)
    except _Refuse as why:
        return [Violation("accepted", f"{_name(cmd)} answered {answer[-2:].hex().upper()}: {why}")]
    except SignedObjectError as err:
        return [Violation("accepted", f"{_name(cmd)} accepted undecodable data ({err})")]
    if model.cells != dict(after):
        return [
            Violation(
                "state change",
                f"{_name(cmd)}: {_diff(model.cells, after)} differ from the documented effect",
            )
        ]
    return []


def _apply(m: _Model, cmd: CommandApdu, answer: bytes) -> None:
    """Apply a successful command to the model, or raise :class:`_Refuse`."""
    img = m.img
    ins, data = cmd.ins, cmd.data
    spec = COMMANDS.get(ins)
    m.require(spec is not None and (cmd.p1, cmd.p2) in spec.p1p2, "undocumented P1 P2")
    if ins == 0x20:  # VERIFY
        m.require(bool(data) or m.session.pin_verified, "PIN status 9000 but not verified")
        if data:
            m.require(img.pin_tries > 0, "VERIFY with a blocked PIN")
            m.require(data == img.pin, "a wrong PIN verified")
            m.put("pin_tries", PIN_TRIES, 1)
    elif ins == 0x24:  # CHANGE PIN
        change = ChangePinData.decode(data)
        m.require(valid_pin(change.new), "an invalid new PIN")
        m.require(img.pin_tries > 0 and change.old == img.pin, "a wrong old PIN accepted")
        m.put_raw("pin", change.new)
        m.put("pin_tries", PIN_TRIES, 1)
    elif ins == 0xE2:  # PERSONALISE
        raise _Refuse("personalisation accepted on a personalised card")
    elif ins == 0x50:  # BEGIN ONLINE
        m.require(not data, "BEGIN ONLINE with data")
        m.require_state(LifeCycle.ACTIVE, LifeCycle.LOCKED)
        m.abort_transfer()
        m.next_atc()
    elif ins == 0x52:
        _issuer_update(m, data, answer)
    elif ins == 0x54:  # PAY
        pay = PayData.decode(data)
        m.require_state(LifeCycle.ACTIVE)
        m.abort_transfer()
        atc = m.next_atc()
        m.spend(pay.amount, pay.terminal_time)
        m.record(atc, HistoryKind.PAY, pay.amount, pay.terminal_time, pay.terminal_id)
        _check_receipt(m, pay, atc, answer)
    elif ins == 0x1E:  # LOCK
        order = LockOrder.decode(m.issuer_object(data, ObjectKind.LOCK_ORDER))
        m.require(order.card_id == img.card_id, "a lock order for another card")
        m.require(order.issued_at > img.unlock_mark, "a lock order older than the unlock")
        m.require_state(LifeCycle.ACTIVE, LifeCycle.LOCKED)
        if img.state == LifeCycle.ACTIVE:
            atc = m.next_atc()
            m.put("state", LifeCycle.LOCKED, 1)
            if order.issued_at > m.get("time_mark"):
                m.put("time_mark", order.issued_at)
            m.record(atc, HistoryKind.LOCK, 0, order.issued_at, bytes(8))
    elif ins == 0x58 and cmd.p1 == 0:
        _transfer_ask(m, data)
    elif ins == 0x58:
        _transfer_value(m, data)
    elif ins == 0x56:
        _transfer_out(m, data)
    elif ins == 0x5A:  # TRANSFER ACK
        pending = img.pending
        m.require(pending is not None and pending.role == TransferRole.PAYER, "ACK, nothing sent")
        assert pending is not None
        t = Transfer.decode(pending.transfer)
        body = m.card_object(data, ObjectKind.TRANSFER_ACK, t.to_id, pending.counterparty_key)
        m.require(body == pending.transfer, "an acknowledgement of another transfer")
        m.put_raw("xfer_pending", b"")
    else:
        raise _Refuse("an undocumented command succeeded")


def _check_receipt(m: _Model, pay: PayData, atc: int, answer: bytes) -> None:
    """A whole receipt in the answer must verify with the card's certified key."""
    if answer[-2:] != b"\x90\x00":
        return
    try:
        cert = CardCertificate.decode(parse_envelope(m.img.certificate).body)
        receipt = check_receipt(answer[:-2], cert, pay)
    except (TerminalError, SignedObjectError) as err:
        raise _Refuse(f"a receipt that does not verify: {err}") from None
    m.require(receipt.atc == atc, f"receipt ATC {receipt.atc}, expected {atc}")
    m.require(receipt.balance == m.get("balance"), "receipt balance is not the new balance")


def _issuer_update(m: _Model, data: bytes, answer: bytes) -> None:
    img = m.img
    update = IssuerUpdate.decode(m.issuer_object(data, ObjectKind.ISSUER_UPDATE))
    m.require(update.card_id == img.card_id, "an update for another card")
    m.require_state(LifeCycle.ACTIVE, LifeCycle.LOCKED)
    m.require(update.card_nonce == m.session.nonce, "an update outside its online session")
    actions = UpdateAction(update.actions & 0x3F)
    m.require(update.actions == actions and bool(actions), "unknown or no action bits")
    if img.state == LifeCycle.LOCKED:
        m.require(bool(actions & (UpdateAction.UNLOCK | UpdateAction.TERMINATE)), "locked")
    if actions & UpdateAction.RENEW:
        cred = Credential.decode(m.issuer_object(update.credential, ObjectKind.CREDENTIAL))
        m.require(cred.card_id == img.card_id, "a credential for another card")
        m.require(cred.card_nonce == update.card_nonce, "a credential of another session")
        current = img.credential
        m.require(current is None or cred.serial > current.serial, "an older credential")
        m.require(cred.expires_at > cred.issued_at, "a credential that expires before issue")
    else:
        m.require(update.credential == b"", "a credential without RENEW")
    load = update.load_amount if actions & UpdateAction.LOAD else 0
    restore = update.restore_amount if actions & UpdateAction.RESTORE else 0
    m.require(bool(actions & UpdateAction.LOAD) == (update.load_amount > 0), "LOAD amount")
    m.require(bool(actions & UpdateAction.RESTORE) == (update.restore_amount > 0), "RESTORE")
    m.require(img.balance + load + restore <= img.max_balance, "over the maximum balance")
    m.require(update.log_cleared <= img.log_entries, "clears more than the log holds")
    atc = m.next_atc()
    when = update.issuer_time
    m.put("time_mark", when)
    zeros = bytes(8)
    if actions & UpdateAction.RENEW:
        m.put_raw("credential", update.credential)
        m.put("offline_spent", 0)
        m.record(atc, HistoryKind.RENEW, 0, when, zeros)
    if load:
        m.put("balance", m.get("balance") + load)
        m.record(atc, HistoryKind.LOAD, load, when, zeros)
    if restore:
        m.put("balance", m.get("balance") + restore)
        m.record(atc, HistoryKind.RESTORE, restore, when, zeros)
    if update.log_cleared:
        kept = split_exception_log(img.log_raw)[update.log_cleared :]
        m.put_raw("xfer_log", b"".join(e.encode() for e in kept))
    if actions & UpdateAction.UNBLOCK_PIN:
        m.put("pin_tries", PIN_TRIES, 1)
        m.record(atc, HistoryKind.UNBLOCK_PIN, 0, when, zeros)
    if actions & UpdateAction.UNLOCK:
        m.put("unlock_mark", max(img.unlock_mark, when))
        m.put("state", LifeCycle.ACTIVE, 1)
        m.record(atc, HistoryKind.UNLOCK, 0, when, zeros)
    if actions & UpdateAction.TERMINATE:
        m.put("state", LifeCycle.TERMINATED, 1)
        m.record(atc, HistoryKind.TERMINATE, 0, when, zeros)
    if answer[-2:] == b"\x90\x00":
        m.require(answer[:-2] == atc.to_bytes(4, "big"), "ISSUER UPDATE answered another ATC")


def _certified_other(m: _Model, raw: bytes) -> CardCertificate:
    cert = CardCertificate.decode(m.issuer_object(raw, ObjectKind.CARD_CERTIFICATE))
    m.require(cert.card_id != m.img.card_id, "a transfer with itself")
    return cert


def _transfer_ask(m: _Model, data: bytes) -> None:
    img = m.img
    ask = TransferAskData.decode(data)
    m.require_state(LifeCycle.ACTIVE)
    payer = _certified_other(m, ask.payer_certificate)
    m.require(ask.amount > 0, "asked for 0")
    m.require(img.balance + ask.amount <= img.max_balance, "would exceed the maximum balance")
    m.room_to_start()
    m.abort_transfer()
    to_seq = m.next_atc()
    t = Transfer(payer.card_id, img.card_id, ask.amount, img.currency, ask.from_seq, to_seq)
    pending = PendingTransfer(TransferRole.PAYEE, t.encode(), payer.public_key)
    m.put_raw("xfer_pending", pending.encode())


def _transfer_out(m: _Model, data: bytes) -> None:
    img = m.img
    out = TransferOutData.decode(data)
    m.require_state(LifeCycle.ACTIVE)
    payee = _certified_other(m, out.payee_certificate)
    body = m.card_object(out.request, ObjectKind.TRANSFER_REQUEST, payee.card_id, payee.public_key)
    t = Transfer.decode(body)
    m.require(t.from_id == img.card_id and t.to_id == payee.card_id, "a request of other cards")
    m.require(t.currency == img.currency, "another currency")
    m.require(t.from_seq == img.atc + 1, "a request for another ATC")
    m.room_to_start()
    m.abort_transfer()
    atc = m.next_atc()
    m.spend(t.amount, out.terminal_time)
    m.put("xfer_out", img.transfers_out + t.amount, 8)
    m.put_raw("xfer_pending", PendingTransfer(TransferRole.PAYER, body, payee.public_key).encode())
    m.record(atc, HistoryKind.TRANSFER_OUT, t.amount, out.terminal_time, payee.card_id)


def _transfer_value(m: _Model, data: bytes) -> None:
    img = m.img
    pending = img.pending
    m.require(pending is not None and pending.role == TransferRole.PAYEE, "value, nothing asked")
    assert pending is not None
    m.require_state(LifeCycle.ACTIVE)
    t = Transfer.decode(pending.transfer)
    body = m.card_object(data, ObjectKind.TRANSFER_VALUE, t.from_id, pending.counterparty_key)
    m.require(body == pending.transfer, "the value of another transfer")
    m.require(img.balance + t.amount <= img.max_balance, "over the maximum balance")
    atc = m.next_atc()
    m.put("balance", img.balance + t.amount)
    m.put("xfer_in", img.transfers_in + t.amount, 8)
    m.put_raw("xfer_pending", b"")
    m.record(atc, HistoryKind.TRANSFER_IN, t.amount, img.time_mark, t.from_id)


# the card under test, with the oracle ---------------------------------------------------
@dataclass
class PayPlan:
    amount: int
    terminal_time: int
    pin: bytes | None  # the PIN to verify first, when the amount needs it


def pay_plan(img: Image, amount: int = 1) -> PayPlan | None:
    """How to make a valid PAY of ``amount`` on this state, or None if the state allows none."""
    cred = img.credential
    if img.state != LifeCycle.ACTIVE or cred is None:
        return None
    if amount > min(img.balance, cred.per_payment_limit, cred.offline_cap - img.offline_spent):
        return None
    low, high = max(0, img.time_mark - cred.tolerance), cred.expires_at - 1
    if low > high:
        return None
    needs_pin = amount > cred.no_pin_limit
    if needs_pin and img.pin_tries == 0:
        return None
    return PayPlan(amount, max(low, min(img.time_mark, high)), img.pin if needs_pin else None)


@dataclass
class FuzzCard:
    """A card on the world's image; every APDU through :meth:`send` meets the oracle."""

    w: World = field(default_factory=world)
    trail: list[bytes] = field(default_factory=list)  # APDUs since the last restore
    resets: int = 0
    harness_apdus: int = 0

    def __post_init__(self) -> None:
        self.card, self.backend, self.rng = card_on(self.w.image)
        self.cells: Cells = self.w.image
        self.session = Transient()
        self.pay_terminal = 0

    def restore(self, select: bool = True) -> list[Violation]:
        """Back to the image: committed cells, random source, transient state."""
        self.backend.restore(self.w.image)
        self.rng.reset()
        self.card.reset()
        self.session.restart()
        self.cells = self.w.image
        self.trail = []
        self.resets += 1
        if not select:
            return []
        return self.harness(SELECT, 0x9000)

    def send(self, raw: bytes) -> tuple[bytes, list[Violation]]:
        """One APDU, checked by every oracle; returns the answer and what failed."""
        selected = self.card.selected is not None
        saves = self.backend.saves
        before = self.cells
        self.trail.append(raw)
        try:
            answer = self.card.process(raw)
        except Exception as err:
            self.cells = self.card.store.snapshot()
            return b"", [Violation("exception", f"{type(err).__name__}: {err}")]
        after = before
        if self.backend.saves != saves:
            after = self.cells = self.card.store.snapshot()
        return answer, check_exchange(self.w, selected, before, after, raw, answer, self.session)

    def harness(self, raw: bytes, expect: int | None = None) -> list[Violation]:
        """An APDU of the harness itself: the same oracle, and the answer it needs."""
        self.harness_apdus += 1
        answer, violations = self.send(raw)
        sw = int.from_bytes(answer[-2:], "big") if len(answer) >= 2 else -1
        if expect is not None and sw != expect:
            violations.append(Violation("harness", f"{raw.hex().upper()} answered {sw:04X}"))
        return violations

    @property
    def image(self) -> Image:
        return Image.of(self.cells)

    def pay_check(self) -> tuple[list[Violation], bool]:
        """SELECT and a valid PAY whose receipt verifies; on a card that legitimately
        cannot pay any more (locked, terminated, no balance...), the same on the image
        restored. Returns what failed and whether the card had to be restored."""
        violations = self.harness(SELECT, 0x9000)
        img = self.image
        plan = pay_plan(img)
        restored = plan is None
        if plan is None:
            cred = img.credential
            when = cred.issued_at if cred else T0
            # the card must refuse, and change nothing (the oracle checks it)
            violations += self.harness(_apdu(0x80, 0x54, 0, 0, _pay(1, when, 0).encode(), 256))
            violations += self.restore()
            img = self.image
            plan = pay_plan(img)
            assert plan is not None
        if plan.pin is not None:
            violations += self.harness(_apdu(0x00, 0x20, 0x00, 0x80, plan.pin), 0x9000)
        self.pay_terminal += 1
        asked = _pay(plan.amount, plan.terminal_time, self.pay_terminal)
        self.harness_apdus += 1
        answer, found = self.send(_apdu(0x80, 0x54, 0, 0, asked.encode(), 256))
        violations += found
        if answer[-2:] != b"\x90\x00":
            why = f"PAY {plan.amount} at {plan.terminal_time} answered {answer[-2:].hex().upper()}"
            return [*violations, Violation("pay afterwards", why)], restored
        try:
            keys = dict(self.w.issuer_keys)
            cert = check_certificate(img.certificate, img.card_id, keys, plan.terminal_time)
            receipt = check_receipt(answer[:-2], cert, asked)
        except TerminalError as err:
            return [*violations, Violation("pay afterwards", f"receipt: {err}")], restored
        if (receipt.atc, receipt.balance) != (img.atc + 1, img.balance - plan.amount):
            why = f"receipt ATC {receipt.atc} balance {receipt.balance} for {img.summary()}"
            violations.append(Violation("pay afterwards", why))
        if Image.of(self.cells).balance != img.balance - plan.amount:
            violations.append(Violation("pay afterwards", "the balance did not move"))
        return violations, restored


def _pay(amount: int, when: int, n: int) -> PayData:
    return PayData(amount, when, TERMINAL_ID, n.to_bytes(16, "big"))


# inputs: mutations, messages, envelopes ---------------------------------------------------
MUTATIONS = (
    "flip",
    "set",
    "insert",
    "delete",
    "duplicate",
    "truncate",
    "extend",
    "interesting",
    "lc",
    "header",
)
INTERESTING = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x01",
    b"\x00\x00",
    b"\xff\xff",
    b"\x80\x00",
    b"\x7f\xff",
    b"\x01\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x7f\xff\xff\xff",
)


def mutate(data: bytes, op: str, pos: int, value: int) -> bytes:
    """One mutation of ``data`` at ``pos`` (taken modulo the length) with ``value`` (0..255)."""
    n = len(data)
    if op == "insert" or n == 0:
        at = pos % (n + 1)
        return data[:at] + bytes((value,)) * (1 + value % 3) + data[at:]
    at = pos % n
    if op == "flip":
        return data[:at] + bytes((data[at] ^ (1 << (value % 8)),)) + data[at + 1 :]
    if op == "set":
        return data[:at] + bytes((value,)) + data[at + 1 :]
    if op == "delete":
        return data[:at] + data[at + 1 + value % 8 :]
    if op == "duplicate":
        chunk = data[at : at + 1 + value % 32]
        return data[:at] + chunk + data[at:]
    if op == "truncate":
        return data[:at]
    if op == "extend":
        return data + bytes((value,)) * (1 + value % 32)
    if op == "interesting":
        word = INTERESTING[value % len(INTERESTING)]
        return data[:at] + word + data[at + len(word) :]
    if op == "lc":  # the length byte(s) of a command APDU
        if n > 6 and data[4] == 0:
            length = (int.from_bytes(data[5:7], "big") + value - 128) & 0xFFFF
            return data[:5] + length.to_bytes(2, "big") + data[7:]
        if n > 4:
            return data[:4] + bytes(((data[4] + value - 128) & 0xFF,)) + data[5:]
        return data + bytes((value,))
    if op == "header":
        at = pos % min(n, 4)
        return data[:at] + bytes((value,)) + data[at + 1 :]
    raise ValueError(f"unknown mutation {op!r}")


def mutate_all(data: bytes, mutations: Iterable[tuple[str, int, int]]) -> bytes:
    for op, pos, value in mutations:
        data = mutate(data, op, pos, value)
    return data


def mutate_data(raw: bytes, mutations: Iterable[tuple[str, int, int]]) -> bytes:
    """Mutate the data field of a command APDU and encode it again with the right Lc
    (same header, same Le), so that the mutated data reaches the command's handler."""
    try:
        cmd = CommandApdu.parse(raw)
    except MalformedApdu:
        return mutate_all(raw, mutations)
    data = cmd.data
    for op, pos, value in mutations:
        if op not in ("lc", "header"):
            data = mutate(data, op, pos, value)
    data = data[:65535]
    return CommandApdu(cmd.cla, cmd.ins, cmd.p1, cmd.p2, data, cmd.ne, cmd.extended).to_bytes()


def splice(a: bytes, b: bytes, cut_a: int, cut_b: int) -> bytes:
    """The head of ``a`` and the tail of ``b``."""
    return a[: cut_a % (len(a) + 1)] + b[cut_b % (len(b) + 1) :]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "int" (size bytes), "bytes" (fixed size), "var" (length prefix of size bytes)
    size: int


def field_specs(message: type[Message]) -> tuple[FieldSpec, ...]:
    """The fields of a declared structure, from its construct declaration."""
    specs: list[FieldSpec] = []
    for sub in message.STRUCT.subcons:
        con = sub.subcon
        if isinstance(con, cs.FormatField):
            specs.append(FieldSpec(sub.name, "int", con.length))
        elif isinstance(con, cs.Bytes):
            specs.append(FieldSpec(sub.name, "bytes", con.length))
        elif isinstance(con, cs.Prefixed):
            specs.append(FieldSpec(sub.name, "var", con.lengthfield.length))
        else:  # pragma: no cover - a new kind of field in apdu/purse.py
            raise TypeError(f"{message.__name__}.{sub.name}: {type(con).__name__}")
    return tuple(specs)


def build_message(message: type[Message], values: Mapping[str, int | bytes]) -> bytes:
    """The encoding of ``message`` with these field values (sizes as declared)."""
    return message(**values).encode()


_AMOUNTS = (0, 1, 2, 499, 500, 999, 1000, 1001, 4999, 5000, 5001, 9999, 10_000, 10_001, 20_000)
_TIMES = (0, T0 - 301, T0 - 1, T0, T0 + 1, T0 + 3600, T0 + 7200, EXPIRES - 1, EXPIRES, 2**32 - 1)
_COUNTS = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 255, 2**32 - 1)
INT_POOLS: dict[str, tuple[int, ...]] = {
    "amount": (*_AMOUNTS, 90_000, 100_000, 2**31, 2**32 - 1),
    "load_amount": (*_AMOUNTS, 90_000, 2**32 - 1),
    "restore_amount": (*_AMOUNTS, 2**32 - 1),
    "balance": (*_AMOUNTS, 2**32 - 1),
    "max_balance": (0, 1, 100_000, 2**32 - 1),
    "offline_cap": _AMOUNTS,
    "per_payment_limit": _AMOUNTS,
    "no_pin_limit": _AMOUNTS,
    "terminal_time": _TIMES,
    "issued_at": _TIMES,
    "expires_at": _TIMES,
    "issuer_time": _TIMES,
    "time_mark": _TIMES,
    "time": _TIMES,
    "tolerance": (0, 300, 301, 2**32 - 1),
    "currency": (0, 1, 978, 999, 1000, 65535),
    "actions": (0, 1, 2, 3, 4, 8, 0x10, 0x20, 0x22, 0x3F, 0x40, 0x80, 0xFF),
    "log_cleared": (0, 1, 8, 9, 255),
}
_GENERIC_INTS = _COUNTS


def bytes_pool(w: World, name: str, size: int | None) -> tuple[bytes, ...]:
    """Valid-looking values for a bytes field (``size`` None: variable length)."""
    ids = (CARD_ID, PEER_ID, bytes(8), b"\xff" * 8)
    points = (w.card_public, w.peer_public, DOC_ISSUER.public, GENERATOR_POINT, b"\x04" + bytes(64))
    pools: dict[str, tuple[bytes, ...]] = {
        "card_id": ids,
        "from_id": ids,
        "to_id": ids,
        "card_nonce": (bytes(16), *w.nonces),
        "terminal_nonce": (bytes(16), NONCE),
        "public_key": points,
        "issuer_public_key": points,
        "counterparty_key": points,
        "issuer_key_id": (DOC_ISSUER.key_id, OTHER_ISSUER.key_id, bytes(8)),
        "terminal_id": (TERMINAL_ID, bytes(8)),
        "counterparty": (TERMINAL_ID, PEER_ID, bytes(8)),
        "pin": (PIN, b"5678", b"0000", b"123", b"1234567890123", b"12a4", b""),
        "old": (PIN, b"5678", b"0000", b"123", b"12a4", b""),
        "new": (PIN, b"5678", b"123", b"1234567890123", b"12 4", b""),
        "payer_certificate": (w.peer_certificate, w.certificate, b"", w.certificate[:4]),
        "payee_certificate": (w.peer_certificate, w.certificate, b""),
        "request": (*w.requests, b""),
        "credential": (w.credential, b""),
        "transfer": (w.transfer_body, bytes(30)),
        "exception_log": (b"", bytes(31)),
        "digest": (bytes(32),),
    }
    values = pools.get(name, (bytes(size or 0),))
    return tuple(v for v in values if size is None or len(v) == size)


def int_pool(name: str, size: int) -> tuple[int, ...]:
    top = 2 ** (8 * size) - 1
    return (*(v for v in INT_POOLS.get(name, _GENERIC_INTS) if v <= top), top)


# where each structure goes: (CLA, INS, P1, P2) of the commands that take it
ROUTES: dict[type[Message], tuple[tuple[int, int, int, int], ...]] = {
    PayData: ((0x80, 0x54, 0, 0),),
    ChangePinData: ((0x00, 0x24, 0, 0x80),),
    PersonaliseData: ((0x80, 0xE2, 0, 0),),
    TransferAskData: ((0x80, 0x58, 0, 0),),
    TransferOutData: ((0x80, 0x56, 0, 0),),
    CardCertificate: ((0x80, 0xE2, 0x80, 0), (0x80, 0x52, 0, 0)),
    Credential: ((0x80, 0x52, 0, 0),),
    IssuerUpdate: ((0x80, 0x52, 0, 0),),
    Receipt: ((0x80, 0x1E, 0, 0), (0x80, 0x5A, 0, 0)),
    LockOrder: ((0x80, 0x1E, 0, 0),),
    OnlineRequest: ((0x80, 0x52, 0, 0),),
    BlocklistHeader: ((0x80, 0x1E, 0, 0),),
    Transfer: ((0x80, 0x58, 1, 0), (0x80, 0x5A, 0, 0), (0x80, 0x56, 0, 0)),
    HistoryRecord: ((0x80, 0x54, 0, 0), (0x00, 0xB2, 1, 4)),
    PendingTransfer: ((0x80, 0x58, 1, 0),),
    ExceptionEntry: ((0x80, 0x5A, 0, 0),),
}
# the object kind each structure travels under when it is signed
KINDS: dict[type[Message], tuple[ObjectKind, ...]] = {
    CardCertificate: (ObjectKind.CARD_CERTIFICATE,),
    Credential: (ObjectKind.CREDENTIAL,),
    IssuerUpdate: (ObjectKind.ISSUER_UPDATE,),
    Receipt: (ObjectKind.RECEIPT,),
    LockOrder: (ObjectKind.LOCK_ORDER,),
    OnlineRequest: (ObjectKind.ONLINE_REQUEST,),
    BlocklistHeader: (ObjectKind.BLOCKLIST,),
    Transfer: (ObjectKind.TRANSFER_REQUEST, ObjectKind.TRANSFER_VALUE, ObjectKind.TRANSFER_ACK),
}
SIGNERS = ("random", "zeros", "other issuer")
KEY_IDS = (DOC_ISSUER.key_id, OTHER_ISSUER.key_id, CARD_ID, PEER_ID, bytes(8))


def wrap(kind: int, key_id: bytes, body: bytes, signer: str, signature: bytes = b"") -> bytes:
    """An envelope around ``body``: signed by a key the card does not trust, or not at all.

    ``signer`` is one of :data:`SIGNERS`: ``random`` (``signature``, padded to 64
    bytes), ``zeros``, or ``other issuer`` (a real ECDSA signature by
    :data:`OTHER_ISSUER`, whatever the kind byte and key ID say).
    """
    signed = b"PS\x01" + bytes((kind,)) + key_id + len(body).to_bytes(2, "big") + body
    if signer == "other issuer":
        der = OTHER_ISSUER.private.sign(signed, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signed + r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if signer == "zeros":
        return signed + bytes(SIGNATURE_LEN)
    return signed + signature.ljust(SIGNATURE_LEN, b"\0")[:SIGNATURE_LEN]


def command_for(
    route: tuple[int, int, int, int], data: bytes, ne: int | None, extended: bool
) -> bytes:
    """A well-formed command APDU (short or extended) carrying ``data``."""
    cla, ins, p1, p2 = route
    return CommandApdu(cla, ins, p1, p2, data, ne, extended).to_bytes()
