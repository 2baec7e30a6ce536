"""``python -m libs.healthcheck HOST:PORT [SERVICE]``: exit 0 when the server is SERVING.

For container health checks, where grpcurl or grpc_health_probe is not installed.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    address, service = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return 1
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
