"""Wills: published when a connection ends without DISCONNECT (socket dropped, process
SIGKILLed), never after a clean DISCONNECT; v5 will delay: held back while the session
may come back, cancelled when it does, sent when the delay or the session ends."""

import subprocess
import sys
import time

from paho_peer import Failed, Peer, arguments, emit, run


def hold(args):
    """Child mode: connect with a will, say so, then wait to be killed."""
    Peer(args.port, args.version, client_id="will-killed", will=("wills/killed", "killed", 1))
    print("connected", flush=True)
    sys.stdin.read()


def main():
    args = arguments(lambda p: p.add_argument("--hold", action="store_true"))
    if args.hold:
        hold(args)
        return
    watcher = Peer(args.port, args.version, client_id="will-watcher")
    watcher.subscribe("wills/#", 1)
    publisher = Peer(args.port, args.version, client_id="will-fence")

    # A clean DISCONNECT discards the will; a dropped socket sends it.
    polite = Peer(args.port, args.version, client_id="will-polite", will=("wills/polite", "polite", 1))
    polite.disconnect()
    rude = Peer(args.port, args.version, client_id="will-rude", will=("wills/rude", "rude", 1))
    rude.vanish()
    # Messages on other topics than the one awaited: checked at the end with the rest.
    stray = []

    def will_on(topic):
        message, others = watcher.message_on(topic)
        stray.extend(others)
        return message

    emit(event="will", case="socket dropped", **will_on("wills/rude"))

    # SIGKILL of a whole client process.
    child = subprocess.Popen(
        [sys.executable, __file__, "--port", str(args.port), "--version", args.version, "--hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if child.stdout.readline().strip() != "connected":
        raise Failed("the will child did not connect")
    child.kill()
    child.wait()
    emit(event="will", case="process killed", **will_on("wills/killed"))

    if args.version == "5":
        # Will delay 3600 s, session kept, connection dropped: the client comes back
        # within the delay, so no will, whichever the broker notices first, the drop or
        # the new connection [MQTT-3.1.2-8].
        back = Peer(args.port, "5", client_id="will-back", session_expiry=3600,
                    will=("wills/back", "back", 1), will_delay=3600)
        back.vanish()
        back = Peer(args.port, "5", client_id="will-back", clean=False, session_expiry=3600)
        emit(event="reconnected", case="after drop", session_present=back.session_present)
        back.disconnect(session_expiry=0)

        # The same with the old connection still open: the new one takes the session
        # over (DISCONNECT 0x8E to the old one) before the delay, so again no will.
        taken = Peer(args.port, "5", client_id="will-taken", session_expiry=3600,
                     will=("wills/taken", "taken", 1), will_delay=3600)
        taker = Peer(args.port, "5", client_id="will-taken", clean=False, session_expiry=3600)
        emit(event="reconnected", case="takeover", session_present=taker.session_present,
             old_connection_closed_with=taken.wait("disconnect"))
        taker.disconnect(session_expiry=0)

        # Will delay 1 s: sent no sooner than a second after the connection dropped.
        delayed = Peer(args.port, "5", client_id="will-delayed", session_expiry=3600,
                       will=("wills/delayed", "delayed", 1), will_delay=1)
        dropped_at = time.monotonic()
        delayed.vanish()
        message = will_on("wills/delayed")
        emit(event="will", case="delay 1 s", after=time.monotonic() - dropped_at, **message)

        # Will delay 3600 s but the session expires after 1 s: sent when the session ends.
        expiring = Peer(args.port, "5", client_id="will-expiring", session_expiry=1,
                        will=("wills/expiring", "expiring", 1), will_delay=3600)
        expiring.vanish()
        emit(event="will", case="session ends first", **will_on("wills/expiring"))

    # Nothing else: in particular no will from `polite`, `back` or `taken`.
    publisher.publish("wills/fence", "fence", 1)
    for message in stray + watcher.messages_until("fence"):
        emit(event="after", **message)
    watcher.disconnect()
    publisher.disconnect()


run(main)
