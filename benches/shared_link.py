"""One visitor's bulk upload beside another's echo, through `rejoin server`
and `rejoin client` with their defaults, over a link throttled to RATE
bytes a second each way (a proxy with small socket buffers, standing in for
a slow uplink): prints the echo's round trip, idle and during the upload.

usage: python3 benches/shared_link.py path/to/rejoin
env:   RATE=2e6   bytes a second, each direction of the link
       N=12       echoes timed during the upload, one every 0.25 s
Every port is picked free at run time (the server's listening port and the
two public ports are read from what rejoin prints); the logs of both rejoin
processes go to a temporary directory, named at the end.
"""
import asyncio, os, socket, subprocess, sys, tempfile, time

RATE = float(os.environ.get("RATE", 2e6))  # bytes/s each direction
N = int(os.environ.get("N", 12))
if len(sys.argv) != 2:
    sys.exit(__doc__)
BIN = sys.argv[1]


async def throttle(r, w):
    budget_t = time.monotonic()
    try:
        while True:
            d = await r.read(16384)
            if not d:
                break
            w.write(d)
            await w.drain()
            budget_t = max(budget_t, time.monotonic()) + len(d) / RATE
            dt = budget_t - time.monotonic()
            if dt > 0:
                await asyncio.sleep(dt)
    except Exception:
        pass
    finally:
        try:
            w.close()
        except Exception:
            pass


def small(w):
    s = w.get_extra_info("socket")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)


async def proxy_conn(cr, cw, target):
    sr, sw = await asyncio.open_connection("127.0.0.1", target)
    small(cw)
    small(sw)
    await asyncio.gather(throttle(cr, sw), throttle(sr, cw))


async def echo(r, w):
    while True:
        d = await r.read(4096)
        if not d:
            break
        w.write(d)
        await w.drain()


async def sink(r, w):
    while await r.read(65536):
        pass


async def line_with(proc, text, limit=20):
    """The first line of `proc`'s stdout containing `text` (within `limit` s)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(
            loop.run_in_executor(None, proc.stdout.readline), deadline - time.monotonic()
        )
        if not line:
            break
        if text in line:
            return line.strip()
    sys.exit(f"shared_link.py: no line with {text!r} from {proc.args[:2]} (see the logs)")


async def main(logs):
    e = await asyncio.start_server(echo, "127.0.0.1", 0)
    ep = e.sockets[0].getsockname()[1]
    k = await asyncio.start_server(sink, "127.0.0.1", 0)
    kp = k.sockets[0].getsockname()[1]
    env = dict(os.environ)
    env["REJOIN_TOKEN"] = subprocess.check_output([BIN, "token"]).decode().strip()
    procs = []

    def start(args, log):
        p = subprocess.Popen(
            [BIN] + args, env=env, stdout=subprocess.PIPE, text=True,
            stderr=open(os.path.join(logs, log), "w"),
        )
        procs.append(p)
        return p

    try:
        s = start(["server", "--listen", "127.0.0.1:0"], "server.log")
        listen = (await line_with(s, "listening on ")).rsplit(":", 1)[1]
        p = await asyncio.start_server(lambda r, w: proxy_conn(r, w, int(listen)), "127.0.0.1", 0)
        pp = p.sockets[0].getsockname()[1]
        c = start(["client", "--server", f"127.0.0.1:{pp}",
                   "--tcp", f"127.0.0.1:{ep}", "--tcp", f"127.0.0.1:{kp}"], "client.log")
        public = {}
        for _ in range(2):
            line = await line_with(c, " published at ")
            local = line.split()[1].rsplit(":", 1)[1]
            public[int(local)] = int(line.rsplit(":", 1)[1])
        r, w = await asyncio.open_connection("127.0.0.1", public[ep])

        async def rtt():
            t = time.monotonic()
            w.write(b"x")
            await w.drain()
            await r.readexactly(1)
            return (time.monotonic() - t) * 1000

        idle = [await rtt() for _ in range(5)]
        print("idle rtt ms", [round(x, 1) for x in idle])
        br, bw = await asyncio.open_connection("127.0.0.1", public[kp])
        stop = False
        sent = 0

        async def bulk():
            nonlocal sent
            blk = b"b" * 65536
            while not stop:
                bw.write(blk)
                await bw.drain()
                sent += len(blk)

        bt = asyncio.create_task(bulk())
        res = []
        started = time.monotonic()
        for _ in range(N):
            await asyncio.sleep(0.25)
            try:
                x = await asyncio.wait_for(rtt(), 30)
            except asyncio.TimeoutError:
                x = -1
            print(f"t={time.monotonic() - started:.1f} s  rtt {x:.0f} ms  upload sent {sent / 1e6:.1f} MB", flush=True)
            res.append(x)
        stop = True
        bt.cancel()
        print("rtt during the upload, ms", [round(x) for x in res])
        print(f"upload sent {sent / 1e6:.1f} MB in {time.monotonic() - started:.1f} s")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print("logs in", logs, flush=True)
    # Without waiting for the proxy's and services' connections to wind down.
    os._exit(0)


asyncio.run(main(tempfile.mkdtemp(prefix="rejoin-shared-link.")))
