//! What a bot keeps of the cards it posted ([`crate::card`]), so that their buttons work:
//! whose commands they run, what they run, and who pressed which; in the bot's store when it
//! has one, so a card pressed after a restart still works.

/// The most cards a bot remembers; the oldest are forgotten first.
pub(crate) const MAX_CARDS: usize = 1000;
/// How long a card's buttons work.
pub(crate) const CARD_LIFE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// The most presses remembered for one card.
const MAX_PRESSES: usize = 200;

/// What the bot keeps of a card it posted: whose commands its buttons run, what they run, and
/// who pressed which.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CardRecord {
    pub(crate) handler: String,
    /// Each button's title and command.
    pub(crate) buttons: Vec<(String, String)>,
    pub(crate) created_ms: u64,
    /// (sender id, button) already pressed.
    pub(crate) pressed: Vec<(String, usize)>,
}

impl CardRecord {
    pub(crate) fn new(handler: &str, card: &crate::card::Card) -> Self {
        Self {
            handler: handler.to_owned(),
            buttons: card
                .buttons()
                .iter()
                .map(|b| (b.title.clone(), b.command.clone()))
                .collect(),
            created_ms: now_ms(),
            pressed: Vec::new(),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cards a bot posted, by the id the service gave their message: in the bot's store when
/// it has one (a card pressed after a restart still works), else in memory. At most
/// [`MAX_CARDS`], each for [`CARD_LIFE`].
#[derive(Debug, Default)]
pub(crate) struct CardBook {
    store: Option<crate::store::Records>,
    memory: std::sync::Mutex<std::collections::VecDeque<(String, CardRecord)>>,
}

impl CardBook {
    pub(crate) fn new(store: Option<crate::store::Records>) -> Self {
        Self {
            store,
            memory: Default::default(),
        }
    }

    /// Keeps `rec` for the card posted as message `id`.
    pub(crate) fn put(&self, id: &str, rec: &CardRecord) {
        match &self.store {
            Some(records) => {
                let bytes = serde_json::to_vec(rec).expect("a card record serialises");
                if let Err(e) = records.put(id, &bytes) {
                    tracing::warn!(error = %e, "a card could not be kept: its buttons will not work");
                    return;
                }
                // The oldest go once there are too many.
                if let Ok(all) = records.list()
                    && all.len() > MAX_CARDS
                {
                    let mut by_age: Vec<(u64, String)> = all
                        .into_iter()
                        .map(|(k, v)| {
                            let at = serde_json::from_slice::<CardRecord>(&v)
                                .map_or(0, |r| r.created_ms);
                            (at, k)
                        })
                        .collect();
                    by_age.sort();
                    let extra = by_age.len() - MAX_CARDS;
                    for (_, k) in by_age.into_iter().take(extra) {
                        let _ = records.remove(&k);
                    }
                }
            }
            None => {
                let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|(k, _)| k != id);
                m.push_back((id.to_owned(), rec.clone()));
                while m.len() > MAX_CARDS {
                    m.pop_front();
                }
            }
        }
    }

    /// The card posted as message `id`, if the bot keeps it and it has not expired.
    pub(crate) fn get(&self, id: &str) -> Option<CardRecord> {
        let rec = match &self.store {
            Some(records) => records
                .get(id)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<CardRecord>(&b).ok()),
            None => self
                .memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(k, _)| k == id)
                .map(|(_, r)| r.clone()),
        }?;
        (now_ms().saturating_sub(rec.created_ms) < CARD_LIFE.as_millis() as u64).then_some(rec)
    }

    /// Notes that `sender` pressed `button` of card `id`; `false` when they already had.
    pub(crate) fn press(&self, id: &str, sender: &str, button: usize) -> bool {
        let Some(mut rec) = self.get(id) else {
            return false;
        };
        if rec.pressed.iter().any(|(s, b)| s == sender && *b == button) {
            return false;
        }
        if rec.pressed.len() >= MAX_PRESSES {
            rec.pressed.remove(0);
        }
        rec.pressed.push((sender.to_owned(), button));
        self.put(id, &rec);
        true
    }
}
