"""The live Binance source and its wire format (websocket and REST apart), markets as data."""
