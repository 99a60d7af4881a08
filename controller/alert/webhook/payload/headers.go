package payload

// Headers of every delivery besides SignatureHeader (json deliveries of a
// webhook with a secret only).
const (
	DeliveryHeader = "X-Eastguard-Delivery"
	EventHeader    = "X-Eastguard-Event"
)
