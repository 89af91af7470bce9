//! realtime-operator: reconciles `RealtimeServer` resources: prepares the
//! database (publication, replica identity, slots), rolls out the server pods,
//! reports status and cleans up what it created.
