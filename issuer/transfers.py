"""Card-to-card transfers at the issuer: exception logs, totals, reconciliation, restores.

Cards pass value between themselves offline (``card_os/purse/transfer.py``);
the issuer learns about it at each card's online session, from two things in
the card-signed request:

* the card's **transfer totals** (value sent and received over its life):
  their growth since the last session moves the card's shadow balance, so a
  payee's balance is not taken for a clone's;
* the card's **exception log**: transfers aborted while value may have been
  in flight. Each side's entry is recorded once (a log sent again, because
  the update that would clear it never arrived, changes nothing).

A logged transfer is then, by what both cards have said (Mondex's rules):

* **lost**: both sides logged it. The payer debited and never got an
  acknowledgement; the payee asked and never got the value, and can no
  longer accept it. Its value goes back to the payer (a RESTORE in the
  payer's next update, counted once it is applied);
* **completed**: only the payer logged it, and the payee has been online
  since without logging it: the payee got the value (only the
  acknowledgement was lost);
* **not sent**: only the payee logged it, and the payer has been online
  since without logging it: the payer never debited;

("online since" is judged by the ATC of the card's last online request, not
by receipts settled since, which carry no exception log.)
* **maybe lost**: one side logged it and the other has not been online
  since: the issuer waits for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from apdu.purse import OnlineRequest, Transfer, TransferRole, split_exception_log
from apdu.signed import MalformedObject
from issuer.errors import Refused, RegistryError
from issuer.registry import CardRecord, RegistryTx, Renewal, TransferException


class TransferStatus(StrEnum):
    LOST = "lost"
    MAYBE_LOST = "maybe_lost"
    COMPLETED = "completed"
    NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class Reconciled:
    transfer: TransferException
    status: TransferStatus


def classify(x: TransferException, payer: CardRecord, payee: CardRecord) -> TransferStatus:
    """What both cards' reports say of one logged transfer."""
    if x.payer_logged is not None and x.payee_logged is not None:
        return TransferStatus.LOST
    # A card's online request has an ATC of its own and reports every transfer the
    # card aborted before it. The payee's ask took to_seq, so a request of the payee
    # above it came after the ask. The payer debits at exactly from_seq, so a request
    # of the payer at or above it means the debit never happened, or was reported.
    if x.payer_logged is not None:
        heard = payee.reported_atc > x.to_seq
        return TransferStatus.COMPLETED if heard else TransferStatus.MAYBE_LOST
    heard = payer.reported_atc >= x.from_seq
    return TransferStatus.NOT_SENT if heard else TransferStatus.MAYBE_LOST


def reconcile(tx: RegistryTx, card_id: bytes | None = None) -> list[Reconciled]:
    out = []
    for x in tx.exceptions(card_id):
        payer, payee = tx.card(x.from_id), tx.card(x.to_id)
        if payer is None or payee is None:  # the foreign keys forbid it
            raise RegistryError("a logged transfer names an unregistered card")
        out.append(Reconciled(x, classify(x, payer, payee)))
    return out


def record_log(tx: RegistryTx, card: CardRecord, request: OnlineRequest, now: int) -> int:
    """Record the card's exception log; returns how many entries it reported."""
    cid = card.card_id
    try:
        entries = split_exception_log(request.exception_log)
        transfers = [(e.role, Transfer.decode(e.transfer)) for e in entries]
    except MalformedObject:
        raise Refused("malformed", "the request's exception log does not parse", cid) from None
    for role, t in transfers:
        payer_side = role == TransferRole.PAYER
        mine = t.from_id if payer_side else t.to_id
        other = t.to_id if payer_side else t.from_id
        if role not in (TransferRole.PAYER, TransferRole.PAYEE) or mine != cid:
            raise Refused("malformed", "an exception-log entry names another card's side", cid)
        if tx.card(other) is None:
            raise Refused("malformed", "an exception-log entry names an unknown card", cid)
        entry = TransferException(t.from_id, t.from_seq, t.to_id, t.to_seq, t.amount, t.currency)
        tx.log_exception(entry, payer_side, now)
    return len(transfers)


def apply_totals(card: CardRecord, request: OnlineRequest) -> None:
    """Move the shadow balance by the value sent and received since the last report."""
    if request.transfers_out < card.transfers_out or request.transfers_in < card.transfers_in:
        raise Refused("clone_suspected", "the card's transfer totals went backwards", card.card_id)
    received = request.transfers_in - card.transfers_in
    sent = request.transfers_out - card.transfers_out
    card.shadow_balance += received - sent
    card.transfers_out, card.transfers_in = request.transfers_out, request.transfers_in


def to_restore(tx: RegistryTx, card_id: bytes) -> list[TransferException]:
    """This card's lost transfers (as payer) that no update restores yet."""
    return [
        r.transfer
        for r in reconcile(tx, card_id)
        if r.status is TransferStatus.LOST
        and r.transfer.from_id == card_id
        and r.transfer.restore_serial is None
        and not r.transfer.restored
    ]


def settle_restore(tx: RegistryTx, renewal: Renewal, applied: bool) -> None:
    """An update's fate reaches its restores: applied for good, or free to go again."""
    if not renewal.restore:
        return
    for x in tx.exceptions(renewal.card_id):
        if x.from_id == renewal.card_id and x.restore_serial == renewal.serial and not x.restored:
            tx.set_restore(x.key, renewal.serial if applied else None, restored=applied)
