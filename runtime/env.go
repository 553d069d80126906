package runtime

// The environment `ringo launch` gives each worker beyond torchrun's
// contract (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
// MASTER_ADDR, MASTER_PORT, TORCHELASTIC_*). Init reads these; programs
// in other languages may ignore them.
const (
	// EnvHeartbeatFD names the file descriptor of the pipe that
	// Heartbeat writes to.
	EnvHeartbeatFD = "RINGO_HEARTBEAT_FD"
	// EnvCollectiveAddr is host:port where rank 0 serves the bootstrap of
	// the collective group (the tcp transport's rendezvous).
	EnvCollectiveAddr = "RINGO_COLLECTIVE_ADDR"
	// EnvTokenFile names a file (mode 0600) that holds the job token; the
	// token itself never travels in the environment or in argv.
	EnvTokenFile = "RINGO_TOKEN_FILE"
	// EnvGeneration is the rendezvous generation the worker belongs to.
	EnvGeneration = "RINGO_GENERATION"
	// EnvRdzvEndpoint is where the launchers meet (for logs and tools).
	EnvRdzvEndpoint = "RINGO_RDZV_ENDPOINT"
	// EnvNodeAddr is the address other nodes reach this worker's node at.
	EnvNodeAddr = "RINGO_NODE_ADDR"
	// EnvNNodes is the number of nodes in the round.
	EnvNNodes = "RINGO_NNODES"
	// EnvTransport selects the collective transport: tcp, shm, mix,
	// libp2p, or empty for the default (shm when every rank shares one
	// node, else mix: shm to same-host peers, TCP to the rest).
	EnvTransport = "RINGO_TRANSPORT"
	// EnvP2PIdentity and EnvP2PPeers name, for libp2p, this worker's
	// private key file and the file of every rank's peer ID.
	EnvP2PIdentity = "RINGO_P2P_IDENTITY"
	EnvP2PPeers    = "RINGO_P2P_PEERS"
	// EnvSite labels the site (data centre) of the worker's node, for
	// training across sites (NewOuter); `ringo launch --site` sets it.
	// Unset, every node is a site of its own.
	EnvSite = "RINGO_SITE"
)

// Heartbeat wire, from worker to launcher over the pipe: 9 bytes per
// message, a kind byte then the step as a little-endian int64. BeatInit
// (step unused) says the worker is a Go program that called Init, which
// the launcher sends SIGQUIT before stopping it for a hang so that its
// goroutine stacks land in its log; BeatGo reports progress; BeatFault
// (step: the rank blamed, -1 for none) says the worker's group failed
// because of that rank, so that the launcher does not report the worker
// as the root cause when it exits in reaction. BeatReport carries a
// payload: the int64 is its length, and that many bytes of a JSON Report
// follow.
const (
	BeatSize   = 9
	BeatInit   = 'i'
	BeatGo     = 'g'
	BeatFault  = 'f'
	BeatReport = 'r'
	// MaxReport bounds a Report's payload; a launcher drops a worker's
	// pipe that announces more.
	MaxReport = 1 << 20
)
