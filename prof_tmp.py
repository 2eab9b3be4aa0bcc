import asyncio, time, tempfile, cProfile, pstats, sys
from pathlib import Path
import aiohttp
from server.app import create_app
from server.config import Settings
from bench.engagement import seed, PASSWORD
from aiohttp.test_utils import TestServer

async def main():
    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp()), token_secret="x"*40))
    server = TestServer(app, host="127.0.0.1"); await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    await seed(app, time.time())
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        body = await (await http.get(url + "/login")).text()
        token = body.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        await http.post(url + "/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token})
        for path in sys.argv[1:]:
            await (await http.get(url + path)).text()
            pr = cProfile.Profile(); c0 = time.process_time(); pr.enable()
            for _ in range(5):
                await (await http.get(url + path)).text()
            pr.disable()
            print(path, "cpu ms per request", round((time.process_time() - c0) / 5 * 1000, 1))
            pstats.Stats(pr).sort_stats("tottime").print_stats(14)
    await server.close()
asyncio.run(main())
