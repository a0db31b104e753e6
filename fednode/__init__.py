"""fednode: a peer-to-peer federation node for the Model Context Protocol.

Run one node per host (``fednode run --config node.toml``) or embed one in a Trio program::

    async with fednode.open_node(fednode.load_config("node.toml")) as node:
        await node.request("node-b", "echo", {"hello": "world"})
"""

from ._config._auth import AuthManager as AuthManager
from ._config._auth import AuthReason as AuthReason
from ._config._auth import Claims as Claims
from ._config._config import AuthConfig as AuthConfig
from ._config._config import BackoffConfig as BackoffConfig
from ._config._config import ClientsConfig as ClientsConfig
from ._config._config import HeartbeatConfig as HeartbeatConfig
from ._config._config import LinkConfig as LinkConfig
from ._config._config import MCPConfig as MCPConfig
from ._config._config import NodeConfig as NodeConfig
from ._config._config import NodeKeys as NodeKeys
from ._config._config import PeerConfig as PeerConfig
from ._config._config import Secret as Secret
from ._config._config import ServerConfig as ServerConfig
from ._config._config import TLSConfig as TLSConfig
from ._config._config import load_config as load_config
from ._errors import AuthError as AuthError
from ._errors import BindError as BindError
from ._errors import ConfigError as ConfigError
from ._errors import FednodeError as FednodeError
from ._errors import LinkClosedError as LinkClosedError
from ._errors import MessageTooLargeError as MessageTooLargeError
from ._errors import PeerConnectError as PeerConnectError
from ._errors import PeerError as PeerError
from ._errors import PeerUnavailableError as PeerUnavailableError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import RequestError as RequestError
from ._errors import RequestTimeoutError as RequestTimeoutError
from ._errors import UnknownPeerError as UnknownPeerError
from ._node._node import Node as Node
from ._node._node import ReloadResult as ReloadResult
from ._node._node import open_node as open_node
from ._node._node import serve as serve
from ._peers._backoff import Backoff as Backoff
from ._peers._link import Direction as Direction
from ._peers._link import RequestContext as RequestContext
from ._peers._link import Transit as Transit
from ._peers._supervisor import PeerState as PeerState
from ._peers._supervisor import PeerStatus as PeerStatus
from ._version import __version__ as __version__
