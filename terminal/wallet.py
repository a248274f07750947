"""The wallet terminal: two card slots and a remittance button (the patent's fig. 2).

``Wallet.transfer`` moves value from the payer's card to the payee's with
the four transfer commands of ``docs/protocol.md`` (after Mondex): the payee
asks, the payer sends, the payee acknowledges, the payer closes. The cards
check each other (certificates signed by the issuer, messages signed by the
cards, both sequence numbers); the wallet only carries the messages, and
needs no keys and no connection to the issuer.

When a step is refused or a card is pulled out, the wallet says where the
transfer stopped. From the moment the payer has debited until the payee has
credited, the value is in flight; if the transfer is then abandoned, both
cards keep it in their exception logs, which the issuer reads at their next
online sessions: it restores value that is provably lost to the payer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from apdu.clock import Clock, system_clock
from apdu.errors import TransportError
from apdu.purse import Tag, Transfer
from apdu.purse_client import PurseClient
from apdu.status import CardError
from terminal.errors import Declined, TerminalError
from terminal.session import card_step


class Step(StrEnum):
    """How far a transfer got (where a failure stopped it)."""

    READ = "reading the cards"
    ASK = "the payee's request (TRANSFER IN ask)"
    SEND = "the payer's debit (TRANSFER OUT)"
    RECEIVE = "the payee's credit (TRANSFER IN value)"
    CLOSE = "the payer's close (TRANSFER ACK)"


# what a failure at each step means for the value
_AFTERMATH = {
    Step.READ: "nothing moved",
    Step.ASK: "nothing moved",
    Step.SEND: "nothing moved (the payer did not debit)",
    Step.RECEIVE: "the payer has debited and the payee has not credited: the value is in "
    "flight; both cards log it at their next transaction, and the issuer restores it to "
    "the payer once both logs reach it",
    Step.CLOSE: "the payee has credited; the payer's open entry goes to its exception log "
    "and the issuer reconciles it as completed",
}


# A link that fails mid-command leaves unknown whether the card ran it: only its
# answer may have been lost. The cards' logs still account for the value.
_UNKNOWN = {
    Step.SEND: "nothing moved, unless the payer debited before its answer was lost: then the "
    "value is in flight, both cards log it at their next transaction, and the issuer "
    "restores it to the payer once both logs reach it",
    Step.RECEIVE: "the payer has debited; the value is in flight unless the payee credited "
    "before its answer was lost. The payer logs the open transfer (and so does the payee if "
    "it did not credit), and the issuer reconciles the logs: completed, or lost and restored "
    "to the payer",
}


def _stopped(step: Step, cause: Exception, aftermath: str) -> str:
    return f"transfer stopped at {step.value}: {cause}; {aftermath}"


class TransferFailed(Declined):
    """A card refused a step (``sw``); the message says what became of the value."""

    def __init__(self, step: Step, cause: CardError) -> None:
        super().__init__(f"card_{cause.sw:04x}", _stopped(step, cause, _AFTERMATH[step]), cause.sw)
        self.step = step


class TransferInterrupted(TerminalError):
    """The link to a card failed at ``step`` (a card pulled out, a reader gone)."""

    def __init__(self, step: Step, cause: TransportError) -> None:
        super().__init__(_stopped(step, cause, _UNKNOWN.get(step, _AFTERMATH[step])))
        self.step = step


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer: Transfer  # what both cards signed
    payer_balance: int
    payee_balance: int


class Wallet:
    def __init__(self, clock: Clock = system_clock) -> None:
        self.clock = clock

    def transfer(
        self, payer: PurseClient, payee: PurseClient, amount: int, pin: bytes | None = None
    ) -> TransferResult:
        step = Step.READ
        try:
            payer.select()
            payee.select()
            before = payer.status()
            payer_cert = payer.get_data(Tag.CERTIFICATE)
            payee_cert = payee.get_data(Tag.CERTIFICATE)
            if pin is not None:
                try:
                    payer.verify_pin(pin)
                except CardError as err:
                    raise card_step("the PIN", err) from None
            step = Step.ASK
            request = payee.transfer_ask(amount, before.atc + 1, payer_cert)
            step = Step.SEND
            value = payer.transfer_out(self.clock(), payee_cert, request)
            step = Step.RECEIVE
            ack = payee.transfer_receive(value)
            step = Step.CLOSE
            payer.transfer_ack(ack)
            step = Step.READ
            after_payer, after_payee = payer.status(), payee.status()
        except CardError as err:
            raise TransferFailed(step, err) from None
        except TransportError as err:
            raise TransferInterrupted(step, err) from None
        return TransferResult(
            Transfer(
                from_id=after_payer.card_id,
                to_id=after_payee.card_id,
                amount=amount,
                currency=after_payer.currency,
                from_seq=before.atc + 1,
                to_seq=after_payee.atc - 1,
            ),
            payer_balance=after_payer.balance,
            payee_balance=after_payee.balance,
        )
