"""A quick fuzz of the purse card: random and mutated APDUs, each one through the oracle.

The card is the ``funded`` card of docs/protocol.md (personalised, a credential,
balance 10000), restored from its image before each example; the harness,
the corpus and the oracle are in ``tests/fuzz_kit.py``. After every APDU: an
answer with a status word documented for the command, no exception out of
``Card.process``, the committed store byte-identical unless the answer is
9000/61XX (a wrong PIN spends exactly one try) and, on success, exactly the
documented effect of the command. After every example the card must still
make a valid PAY whose receipt verifies with its certified key.

A few thousand APDUs in all, derandomised: the same examples on every run.
The long campaign (a million APDUs) is ``bench/fuzz_card.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apdu.command import CommandApdu
from apdu.errors import MalformedApdu
from apdu.purse import MESSAGES, PURSE_AID, LifeCycle, Message, PayData, UpdateAction
from apdu.signed import ObjectKind, SignedObjectError, open_envelope
from card_os.purse import PurseApplet
from tests.fuzz_kit import (
    COMMANDS,
    DOC_ISSUER,
    KEY_IDS,
    KINDS,
    MUTATIONS,
    PREFIX,
    ROUTES,
    SELECT,
    SIGNERS,
    FuzzCard,
    build_message,
    bytes_pool,
    check_exchange,
    field_specs,
    int_pool,
    mutate_all,
    mutate_data,
    splice,
    world,
    wrap,
)
from tests.purse_kit import CARD_ID, NONCE, PIN, T0, TERMINAL_ID

W = world()
REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def card() -> FuzzCard:
    """One card for the module; every example starts by restoring its image."""
    return FuzzCard(W)


def run(card: FuzzCard, apdus: Sequence[bytes], *, select: bool = True) -> None:
    """Restore the image, send ``apdus`` through the oracle, then the PAY check."""
    problems = [f"restore: {v}" for v in card.restore(select)]
    for raw in apdus:
        answer, found = card.send(raw)
        problems += [f"{raw.hex(' ').upper()} -> {answer.hex(' ').upper()}: {v}" for v in found]
    if card.image.state in (LifeCycle.LOCKED, LifeCycle.TERMINATED):
        # random bytes never lock or terminate the card: only a genuine issuer object does
        assert any(_issuer_signed(raw) for raw in apdus), card.image.summary()
    found, _restored = card.pay_check()
    problems += [f"PAY check: {v}" for v in found]
    assert not problems, "\n".join(problems)


def _parses(raw: bytes) -> bool:
    try:
        CommandApdu.parse(raw)
    except MalformedApdu:
        return False
    return True


def _issuer_signed(raw: bytes) -> bool:
    """The APDU's data is a lock order or an update that verifies with the issuer key."""
    if not _parses(raw):
        return False
    data = CommandApdu.parse(raw).data
    for kind in (ObjectKind.LOCK_ORDER, ObjectKind.ISSUER_UPDATE):
        try:
            open_envelope(data, kind, dict(W.issuer_keys))
        except SignedObjectError:
            continue
        return True
    return False


# strategies -------------------------------------------------------------------------
BYTE = st.integers(0, 255)
mutations = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 511), BYTE), max_size=4)
corpus_apdus = st.sampled_from(W.corpus)


@st.composite
def messages(draw: st.DrawFn) -> tuple[type[Message], bytes]:
    """A protocol structure with valid-looking (or random) field values, maybe in an envelope."""
    message: type[Message] = draw(st.sampled_from(MESSAGES))
    values: dict[str, int | bytes] = {}
    for spec in field_specs(message):
        if spec.kind == "int":
            top = 2 ** (8 * spec.size) - 1
            values[spec.name] = draw(
                st.sampled_from(int_pool(spec.name, spec.size)) | st.integers(0, top)
            )
            continue
        size = spec.size if spec.kind == "bytes" else None
        raw = (
            st.binary(min_size=size, max_size=size) if size is not None else st.binary(max_size=40)
        )
        pool = bytes_pool(W, spec.name, size)
        values[spec.name] = draw(st.sampled_from(pool) | raw if pool else raw)
    body = build_message(message, values)
    kinds = KINDS.get(message)
    if kinds and draw(st.booleans()):
        kind = draw(st.sampled_from(kinds) | BYTE)
        signature = draw(st.binary(min_size=64, max_size=64))
        signer = draw(st.sampled_from(SIGNERS))
        body = wrap(kind, draw(st.sampled_from(KEY_IDS)), body, signer, signature)
    return message, body


le_forms = st.tuples(
    st.none() | st.integers(1, 256) | st.sampled_from((257, 4096, 65536)), st.booleans()
)


@st.composite
def message_apdus(draw: st.DrawFn) -> bytes:
    """A structure, mutated or not, sent to the command that takes it (or another one)."""
    message, body = draw(messages())
    body = mutate_all(body, draw(mutations))
    routes = ROUTES[message] + tuple(
        (spec.cla, ins, *spec.p1p2[0]) for ins, spec in COMMANDS.items() if ins != 0xA4
    )
    cla, ins, p1, p2 = draw(st.sampled_from(routes))
    ne, extended = draw(le_forms)
    return CommandApdu(cla, ins, p1, p2, body, ne, extended).to_bytes()


def _data(raw: bytes) -> bytes:
    return CommandApdu.parse(raw).data if _parses(raw) else raw[5:]


@st.composite
def structured_apdus(draw: st.DrawFn) -> bytes:
    """CLA 00/80/random, a purse INS or random, documented or random P1 P2, any data,
    short or extended Lc/Le forms."""
    ins = draw(st.sampled_from(sorted(COMMANDS)) | BYTE)
    spec = COMMANDS.get(ins)
    cla = draw(st.sampled_from((spec.cla if spec else 0x80, 0x00, 0x80)) | BYTE)
    p1p2 = st.tuples(BYTE, BYTE)
    p1, p2 = draw(st.sampled_from(spec.p1p2) | p1p2 if spec else p1p2)
    data = draw(
        st.just(b"")
        | st.binary(max_size=300)
        | messages().map(lambda m: m[1])
        | corpus_apdus.map(_data)
    )
    ne, extended = draw(le_forms)
    return CommandApdu(cla, ins, p1, p2, data, ne, extended).to_bytes()


@st.composite
def mutated_corpus(draw: st.DrawFn) -> bytes:
    """A corpus APDU with 1..4 mutations: of its data field (Lc kept right), or of its
    bytes, perhaps spliced with another."""
    raw = draw(corpus_apdus)
    ops = draw(mutations.filter(bool))
    if draw(st.booleans()):  # the data field only, with the right Lc
        return mutate_data(raw, ops)
    if draw(st.booleans()):
        raw = splice(raw, draw(corpus_apdus), draw(st.integers(0, 511)), draw(st.integers(0, 511)))
    return mutate_all(raw, ops)


any_apdu = (
    corpus_apdus | mutated_corpus() | structured_apdus() | message_apdus() | st.binary(max_size=40)
)


@st.composite
def replays(draw: st.DrawFn) -> list[bytes]:
    """A whole session of the corpus in order, each step kept, left out, or mutated
    (its bytes, or its data field with the right Lc)."""
    session = draw(st.sampled_from(W.sessions))
    out = [SELECT]
    for raw in session.apdus:
        step = draw(st.sampled_from(("keep", "keep", "keep", "skip", "bytes", "data")))
        if step == "keep":
            out.append(raw)
        elif step == "bytes":
            out.append(mutate_all(raw, draw(mutations)))
        elif step == "data":
            out.append(mutate_data(raw, draw(mutations)))
    return out


# the fuzz tests ---------------------------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=300), selected=st.booleans())
def test_random_bytes(card: FuzzCard, raw: bytes, selected: bool) -> None:
    """Any 0..300 random bytes, to a card with the purse selected or not, meet every oracle."""
    run(card, [raw], select=selected)


@FUZZ
@given(raw=structured_apdus())
def test_structured_apdus(card: FuzzCard, raw: bytes) -> None:
    """Well-formed APDUs of every CLA/INS/P1/P2 mix, data and Lc/Le form meet every oracle."""
    run(card, [raw])


@FUZZ
@given(raw=message_apdus())
def test_protocol_messages(card: FuzzCard, raw: bytes) -> None:
    """Every structure of apdu.purse.MESSAGES, built from random or boundary field values,
    unsigned or signed by an unknown issuer, mutated, to its command: every oracle holds
    (in particular no forged object changes the card)."""
    run(card, [raw])


@FUZZ
@given(raw=mutated_corpus())
def test_mutated_corpus(card: FuzzCard, raw: bytes) -> None:
    """Bit flips, insertions, deletions, length bytes and splices of the corpus's APDUs
    (docs/protocol.md examples and real sessions) meet every oracle."""
    run(card, [raw])


@settings(FUZZ, max_examples=150)
@given(apdus=st.lists(any_apdu, min_size=2, max_size=8))
def test_sequences(card: FuzzCard, apdus: list[bytes]) -> None:
    """SELECT then 2..8 APDUs of any generator: the oracle holds on each, whatever the
    transient state the previous ones left (PIN verified, online session, pending data)."""
    run(card, [SELECT, *apdus])


@settings(FUZZ, max_examples=80)
@given(apdus=replays())
def test_session_replays(card: FuzzCard, apdus: list[bytes]) -> None:
    """Whole sessions of the corpus with steps left out or mutated reach the deep states
    (online session open, pending transfer, locked, terminated) and keep every oracle."""
    run(card, apdus)


# the harness itself -------------------------------------------------------------------
def test_corpus_sessions_pass_the_oracle(card: FuzzCard) -> None:
    """Every recorded session and every docs/protocol.md example replays on the image with
    no violation (no false alarm), and the genuine objects of the corpus really take the
    card through the success paths the model checks: payments, loads, a lock, credits by
    transfer, a termination."""
    reached: dict[str, int] = {}
    for session in W.sessions:
        problems = card.restore()
        for raw in session.apdus:
            answer, found = card.send(raw)
            problems += found
            if answer[-2:] == b"\x90\x00" and raw[1] in (0x54, 0x52, 0x1E, 0x56, 0x58, 0x5A):
                name = COMMANDS[raw[1]].name
                reached[name] = reached.get(name, 0) + 1
        found, _ = card.pay_check()
        assert not problems + found, f"{session.name}: {problems + found}"
    assert set(reached) == {
        "PAY",
        "ISSUER UPDATE",
        "LOCK",
        "TRANSFER OUT",
        "TRANSFER IN",
        "TRANSFER ACK",
    }


def test_command_table_is_the_applets() -> None:
    """The oracle's command table has exactly the purse's commands, with their CLA."""
    handled = {ins: cla for ins, (cla, _name) in PurseApplet._commands.items()}
    table = {ins: spec.cla for ins, spec in COMMANDS.items() if ins not in (0xA4, 0xC0)}
    assert table == handled


def test_pay_check_restores_a_legitimately_locked_card(card: FuzzCard) -> None:
    """A card locked by a genuine lock order cannot pay: the PAY check sees the refusal
    leave the card unchanged, restores the image and pays there."""
    card.restore()
    order = DOC_ISSUER.lock_order(CARD_ID, T0 + 3600)
    answer, found = card.send(CommandApdu(0x80, 0x1E, 0, 0, order).to_bytes())
    assert (answer, found) == (b"\x90\x00", [])
    assert card.image.state == LifeCycle.LOCKED
    found, restored = card.pay_check()
    assert (found, restored) == ([], True)
    assert card.image.state == LifeCycle.ACTIVE


# the oracle has teeth --------------------------------------------------------------
def _pay(amount: int) -> bytes:
    data = PayData(amount, T0 + 3600, TERMINAL_ID, NONCE).encode()
    return CommandApdu(0x80, 0x54, 0, 0, data, 256).to_bytes()


def _cells(**changes: int) -> dict[str, bytes]:
    sizes = {"pin_tries": 1, "state": 1}
    cells = dict(W.image)
    for key, value in changes.items():
        cells[PREFIX + key] = value.to_bytes(sizes.get(key, 4), "big")
    return cells


FORGED_LOCK = wrap(5, DOC_ISSUER.key_id, CARD_ID + bytes(9), "random", bytes(64))
VERIFY_WRONG = bytes.fromhex("0020008004") + b"0000"
BROKEN: list[tuple[str, bytes, bytes, dict[str, bytes], str]] = [
    (
        "refusal changes the balance",
        _pay(20_000),
        b"\x9c\x04",
        _cells(balance=1),
        "state unchanged",
    ),
    (
        "balance grows on PAY",
        _pay(1),
        bytes(128) + b"\x90\x00",
        _cells(balance=10_001, atc=3),
        "accepted",
    ),
    (
        "forged lock order",
        CommandApdu(0x80, 0x1E, 0, 0, FORGED_LOCK).to_bytes(),
        b"\x90\x00",
        _cells(state=3),
        "accepted",
    ),
    ("unexpected error", _pay(1), b"\x6f\x00", dict(W.image), "6F00"),
    ("undocumented status word", _pay(1), b"\x6a\x82", dict(W.image), "status word"),
    ("two tries for one wrong PIN", VERIFY_WRONG, b"\x63\xc1", _cells(pin_tries=1), "PIN try"),
    (
        "right PIN refused",
        bytes.fromhex("0020008004") + PIN,
        b"\x63\xc2",
        _cells(pin_tries=2),
        "PIN try",
    ),
    (
        "data to a case 1 command",
        bytes.fromhex("00CADF03"),
        bytes(7) + b"\x90\x00",
        dict(W.image),
        "response",
    ),
    ("GET DATA writes", bytes.fromhex("00CADF0300"), b"\x90\x00", _cells(atc=9), "state unchanged"),
    ("ATC goes back on PAY", _pay(1), b"\x61\x70", _cells(atc=1, balance=9999), "state change"),
    (
        "GET RESPONSE with nothing waiting",
        bytes.fromhex("00C0000000"),
        bytes(5) + b"\x90\x00",
        dict(W.image),
        "response chaining",
    ),
    (
        "61XX without the first Ne bytes",
        _pay(1)[:-1] + b"\x10",
        bytes(10) + b"\x61\x70",
        _cells(atc=3, balance=9999),
        "response",
    ),
]


@pytest.mark.parametrize(
    ("raw", "answer", "after", "oracle"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_oracle_flags_a_broken_card(
    raw: bytes, answer: bytes, after: dict[str, bytes], oracle: str
) -> None:
    """Each of these answers (with the store after it) from a broken card fails the oracle named."""
    found = check_exchange(W, True, W.image, after, raw, answer)
    assert oracle in {v.oracle for v in found}, found


def _spends_a_try_before_p1p2(monkeypatch: pytest.MonkeyPatch) -> None:
    original = PurseApplet._pin_command

    def broken(self: PurseApplet, cmd: CommandApdu) -> None:
        self.state.spend_pin_try()
        original(self, cmd)

    monkeypatch.setattr(PurseApplet, "_pin_command", broken)


def _never_asks_for_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    original = PurseApplet._check_spend

    def broken(self: PurseApplet, amount: int, terminal_time: int) -> bool:
        self._pin_verified = True
        return original(self, amount, terminal_time)

    monkeypatch.setattr(PurseApplet, "_check_spend", broken)


def _history_without_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    original = PurseApplet.read_record

    def broken(self: PurseApplet, cmd: CommandApdu) -> bytes:
        self._pin_verified = True
        return original(self, cmd)

    monkeypatch.setattr(PurseApplet, "read_record", broken)


def _keeps_the_session_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    original = PurseApplet.issuer_update

    def broken(self: PurseApplet, cmd: CommandApdu) -> bytes:
        nonce = self._session_nonce
        answer = original(self, cmd)
        self._session_nonce = nonce
        return answer

    monkeypatch.setattr(PurseApplet, "issuer_update", broken)


def _apdu(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", ne: int | None = None) -> bytes:
    return CommandApdu(cla, ins, p1, p2, data, ne).to_bytes()


LOAD_100 = DOC_ISSUER.update(CARD_ID, W.nonces[0], T0 + 60, UpdateAction.LOAD, load_amount=100)
Patch = Callable[[pytest.MonkeyPatch], None]
BROKEN_CARDS: list[tuple[str, Patch, list[bytes], str]] = [
    (
        "spends a PIN try before checking P1 P2",
        _spends_a_try_before_p1p2,
        [bytes.fromhex("0020008104") + PIN],
        "state unchanged",
    ),
    ("never asks for the PIN", _never_asks_for_the_pin, [_pay(1001)], "accepted"),
    (
        "shows the history without the PIN",
        _history_without_the_pin,
        [_apdu(0, 0xB2, 1, 4, ne=256)],
        "accepted",
    ),
    (
        "accepts an update twice",
        _keeps_the_session_nonce,
        [_apdu(0x80, 0x50, 0, 0, ne=256), *[_apdu(0x80, 0x52, 0, 0, LOAD_100, 256)] * 2],
        "accepted",
    ),
]


@pytest.mark.parametrize(
    ("patch", "apdus", "oracle"), [c[1:] for c in BROKEN_CARDS], ids=[c[0] for c in BROKEN_CARDS]
)
def test_the_harness_catches_a_broken_card(
    monkeypatch: pytest.MonkeyPatch, patch: Patch, apdus: list[bytes], oracle: str
) -> None:
    """Through the whole harness (card, shadow session, oracle): a card with this bug
    planted fails the oracle named, on the APDU that shows the bug and on no other."""
    patch(monkeypatch)
    broken = FuzzCard(W)
    assert broken.restore() == []
    found = [broken.send(raw)[1] for raw in apdus]
    assert [bool(f) for f in found] == [False] * (len(apdus) - 1) + [True], found
    assert oracle in {v.oracle for v in found[-1]}, found[-1]


def test_the_campaign_script_runs() -> None:
    """bench/fuzz_card.py runs a short campaign, prints its summary and finds nothing."""
    script = REPO / "bench" / "fuzz_card.py"
    done = subprocess.run(
        [sys.executable, str(script), "--apdus", "3000", "--seed", "3", "--pay-every", "500"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3,000 APDUs against the purse card" in done.stdout
    assert "FINDINGS: 0" in done.stdout


def test_select_of_the_purse_is_in_the_corpus() -> None:
    """The corpus selects the purse by its full AID and by a prefix (docs/protocol.md)."""
    selects = [raw for raw in W.corpus if raw[:2] == b"\x00\xa4"]
    assert any(PURSE_AID in raw for raw in selects)
    assert any(PURSE_AID[:5] in raw and PURSE_AID not in raw for raw in selects)
