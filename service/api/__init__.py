"""The gRPC API: the server and servicer, request validation and conversion to domain inputs."""
