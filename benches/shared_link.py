"""One visitor's bulk upload beside another's echo, through `rejoin server`
and `rejoin client` with their defaults, over a link throttled to RATE
bytes a second each way (a proxy with small socket buffers, standing in for
a slow uplink): prints the echo's round trip, idle and during the upload.

usage: python3 benches/shared_link.py path/to/rejoin   (RATE=2e6 N=8 by default)
The server listens on 127.0.0.1:17300 and publishes 17301 and 17302.
"""
import asyncio, socket, sys, time, os, subprocess
RATE = float(os.environ.get("RATE", 2e6))  # bytes/s each direction
BIN = sys.argv[1]

async def throttle(r, w):
    budget_t = time.monotonic()
    try:
        while True:
            d = await r.read(16384)
            if not d: break
            w.write(d); await w.drain()
            budget_t = max(budget_t, time.monotonic()) + len(d) / RATE
            dt = budget_t - time.monotonic()
            if dt > 0: await asyncio.sleep(dt)
    except Exception: pass
    finally:
        try: w.close()
        except Exception: pass

def small(w):
    s = w.get_extra_info("socket")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)

async def proxy_conn(cr, cw, target):
    sr, sw = await asyncio.open_connection("127.0.0.1", target)
    small(cw); small(sw)
    await asyncio.gather(throttle(cr, sw), throttle(sr, cw))

async def echo(r, w):
    while True:
        d = await r.read(4096)
        if not d: break
        w.write(d); await w.drain()

async def sink(r, w):
    while await r.read(65536): pass

async def main():
    e = await asyncio.start_server(echo, "127.0.0.1", 0); ep = e.sockets[0].getsockname()[1]
    k = await asyncio.start_server(sink, "127.0.0.1", 0); kp = k.sockets[0].getsockname()[1]
    env = dict(os.environ); env["REJOIN_TOKEN"] = subprocess.check_output([BIN, "token"]).decode().strip()
    s = subprocess.Popen([BIN, "server", "--listen", "127.0.0.1:17300"], env=env, stderr=open("/tmp/hol/s.log","w"))
    await asyncio.sleep(0.5)
    p = await asyncio.start_server(lambda r, w: proxy_conn(r, w, 17300), "127.0.0.1", 0); pp = p.sockets[0].getsockname()[1]
    c = subprocess.Popen([BIN, "client", "--server", f"127.0.0.1:{pp}", "--tcp", f"127.0.0.1:{ep}@17301", "--tcp", f"127.0.0.1:{kp}@17302"], env=env, stderr=open("/tmp/hol/c.log","w"))
    for _ in range(100):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", 17301); break
        except OSError: await asyncio.sleep(0.1)
    async def rtt():
        t = time.monotonic(); w.write(b"x"); await w.drain(); await r.readexactly(1); return (time.monotonic() - t) * 1000
    idle = [await rtt() for _ in range(5)]
    print("idle rtt ms", [round(x,1) for x in idle])
    br, bw = await asyncio.open_connection("127.0.0.1", 17302)
    stop = False; sent = 0
    async def bulk():
        nonlocal sent
        blk = b"b" * 65536
        while not stop:
            bw.write(blk); await bw.drain(); sent += len(blk)
    bt = asyncio.create_task(bulk())
    res = []
    for i in range(int(os.environ.get("N", 12))):
        await asyncio.sleep(0.25)
        try:
            x = await asyncio.wait_for(rtt(), 30)
        except asyncio.TimeoutError:
            x = -1
        print(f"t={time.monotonic():.1f} rtt {x:.0f} ms sent {sent/1e6:.1f} MB", flush=True)
        res.append(x)
    stop = True
    print("rtt during bulk ms", [round(x) for x in res])
    print("bulk sent MB", sent/1e6, "in", 20*0.25, "s-ish")
    s.kill(); c.kill()
    os._exit(0)
asyncio.run(main())
