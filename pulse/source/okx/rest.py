"""OKX v5 REST, only what the live source needs: the contract values of swaps and futures.

`GET /api/v5/public/instruments?instType=SWAP` (https://www.okx.com/docs-v5/en/#public-data-rest-api-get-instruments),
public, 20 requests per 2 s per IP; a reply:

    {"code": "0", "msg": "", "data": [{"instId": "BTC-USD-SWAP", "instType": "SWAP", "ctVal": "100",
     "ctMult": "1", "ctValCcy": "USD", "uly": "BTC-USD", ...}]}
"""

from __future__ import annotations

import aiohttp

from pulse.errors import Unavailable
from pulse.source.contract import InvalidFrame
from pulse.source.okx.wire import Instrument, parse_instruments

INSTRUMENTS_PATH = "/api/v5/public/instruments"


def is_contract(inst_id: str) -> bool:
    """`BTC-USD-SWAP` and `BTC-USD-220527` count contracts; spot `BTC-USDT` does not."""
    return inst_id.count("-") >= 2


async def contract_instruments(base_url: str, timeout_s: float = 10.0) -> dict[str, Instrument]:
    """Every swap and future OKX lists, by instId."""
    bodies = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            for inst_type in ("SWAP", "FUTURES"):
                url = f"{base_url.rstrip('/')}{INSTRUMENTS_PATH}?instType={inst_type}"
                async with session.get(url) as response:
                    if response.status != 200:
                        raise Unavailable(f"OKX answered HTTP {response.status} for its instruments at {url}")
                    bodies.append(await response.read())
    except (aiohttp.ClientError, TimeoutError) as error:
        raise Unavailable(f"could not read OKX's instruments from {base_url}: {error or 'timed out'}"
                          " (PULSE_PRODUCER__REST_BASE_URL)") from None
    try:
        return parse_instruments(bodies)
    except InvalidFrame as error:
        raise Unavailable(f"OKX's instruments reply is not what Pulse reads: {error.reason}") from None
