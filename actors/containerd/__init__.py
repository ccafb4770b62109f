"""The containerd bridge: gRPC client (grpclib via trio-asyncio) and managed child."""
